/*
 * Typed calls (sbx/conn.h): one function per method, each packing its params table from
 * PROTOCOL.md. Built on the public sbx_conn_begin / sbx_conn_commit only. Params maps are
 * described as lists of key/value entries whose absent ones are skipped, so no map header is
 * counted by hand.
 */
#include <stdio.h>
#include <string.h>

#include "sbx/conn.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* --- params as key/value lists ----------------------------------------------------------- */

enum kv_type {
    KV_SKIP = 0, /* absent: not packed */
    KV_U64,
    KV_I64,
    KV_BOOL,
    KV_STR,  /* str */
    KV_BSTR, /* OS byte string: str when UTF-8, else bin (§4.4) */
    KV_REQ,  /* a required bstr: NULL is refused locally with BAD_PARAM */
    KV_BIN,
    KV_STRN,  /* str of n bytes */
    KV_STRV,  /* array of n bstr (s: ignored; p: const char *const *) */
    KV_SPAWN, /* a nested map packed by sbx_spawn_params_pack (p) */
};

struct kv {
    const char *k;
    enum kv_type t;
    uint64_t u;
    int64_t i;
    bool b;
    const char *s;
    const void *p;
    size_t n;
};

/* Entry constructors; the *_if and optional string ones give KV_SKIP when absent. */
static struct kv kv_u64(const char *k, uint64_t v)
{
    return (struct kv){ .k = k, .t = KV_U64, .u = v };
}

static struct kv kv_u64_if(bool present, const char *k, uint64_t v)
{
    return (struct kv){ .k = k, .t = present ? KV_U64 : KV_SKIP, .u = v };
}

static struct kv kv_i64(const char *k, int64_t v)
{
    return (struct kv){ .k = k, .t = KV_I64, .i = v };
}

static struct kv kv_i64_if(bool present, const char *k, int64_t v)
{
    return (struct kv){ .k = k, .t = present ? KV_I64 : KV_SKIP, .i = v };
}

/* A bool that is always packed. */
static struct kv kv_bool(const char *k, bool v)
{
    return (struct kv){ .k = k, .t = KV_BOOL, .b = v };
}

/* A bool whose default is false: packed only when true. */
static struct kv kv_true_if(const char *k, bool v)
{
    return (struct kv){ .k = k, .t = v ? KV_BOOL : KV_SKIP, .b = true };
}

/* A bool whose default is true: packed (as false) only when @v. */
static struct kv kv_false_if(const char *k, bool v)
{
    return (struct kv){ .k = k, .t = v ? KV_BOOL : KV_SKIP, .b = false };
}

static struct kv kv_str(const char *k, const char *v)
{
    return (struct kv){ .k = k, .t = v != NULL ? KV_STR : KV_SKIP, .s = v };
}

static struct kv kv_bstr(const char *k, const char *v)
{
    return (struct kv){ .k = k, .t = v != NULL ? KV_BSTR : KV_SKIP, .s = v };
}

/* A required bstr (a path, a name): NULL is refused before anything is sent. */
static struct kv kv_path(const char *k, const char *v)
{
    return (struct kv){ .k = k, .t = KV_REQ, .s = v };
}

static struct kv kv_bin(const char *k, const void *p, size_t n)
{
    return (struct kv){ .k = k, .t = KV_BIN, .p = p, .n = n };
}

static struct kv kv_strn(const char *k, const char *p, size_t n)
{
    return (struct kv){ .k = k, .t = KV_STRN, .s = p, .n = n };
}

/* An array of @n OS byte strings; absent when @n is 0. */
static struct kv kv_strv(const char *k, const char *const *v, size_t n)
{
    return (struct kv){ .k = k, .t = n > 0 ? KV_STRV : KV_SKIP, .p = v, .n = n };
}

static void pack_strv(msgpack_packer *pk, const char *const *v, size_t n)
{
    (void)msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        sbx_pack_bstr(pk, v[i], strlen(v[i]));
    }
}

static void pack_kv(msgpack_packer *pk, const struct kv *e)
{
    sbx_pack_cstr(pk, e->k);
    switch (e->t) {
    case KV_U64:
        (void)msgpack_pack_uint64(pk, e->u);
        break;
    case KV_I64:
        (void)msgpack_pack_int64(pk, e->i);
        break;
    case KV_BOOL:
        if (e->b) {
            (void)msgpack_pack_true(pk);
        } else {
            (void)msgpack_pack_false(pk);
        }
        break;
    case KV_STR:
        sbx_pack_cstr(pk, e->s);
        break;
    case KV_BSTR:
    case KV_REQ:
        sbx_pack_bstr(pk, e->s, strlen(e->s));
        break;
    case KV_BIN:
        sbx_pack_bin(pk, e->p, e->n);
        break;
    case KV_STRN:
        sbx_pack_strn(pk, e->s, e->n);
        break;
    case KV_STRV:
        pack_strv(pk, e->p, e->n);
        break;
    case KV_SPAWN:
        sbx_spawn_params_pack(pk, e->p);
        break;
    default:
        (void)msgpack_pack_nil(pk);
        break;
    }
}

/* Whether @call takes the identity param `user` (§17.1): the fs methods with a path, transfer.*,
 * pack.create. */
static bool takes_identity(enum sbx_call call)
{
    switch (call) {
    case SBX_CALL_FS_READ:
    case SBX_CALL_FS_WRITE:
    case SBX_CALL_FS_SEEK:
    case SBX_CALL_FS_FSTAT:
    case SBX_CALL_FS_FSYNC:
    case SBX_CALL_FS_FTRUNCATE:
    case SBX_CALL_FS_CLOSE:
    case SBX_CALL_FS_UNWATCH:
    case SBX_CALL_FS_FUTIMES:
    case SBX_CALL_FS_FLOCK:
    case SBX_CALL_FS_FUNLOCK:
    case SBX_CALL_FS_UMASK:
        return false;
    default: {
        /* The families as the call table names them, not a range of the enum's order. */
        const char *cap = sbx_call_cap(call);
        return cap != NULL &&
               (strcmp(cap, "fs") == 0 || strcmp(cap, "transfer") == 0 || strcmp(cap, "pack") == 0);
    }
    }
}

/* Send @call with the params map of the present entries of @kv (and the connection's identity
 * where the method takes one). */
static int call_kv(struct sbx_conn *c, enum sbx_call call, const struct kv *kv, size_t n,
                   void *user, uint32_t *id, struct sbx_err *err)
{
    const char *method = sbx_call_name(call);
    const char *who = takes_identity(call) ? sbx_conn_identity(c) : NULL;
    uint32_t count = who != NULL;
    msgpack_packer *pk;

    for (size_t i = 0; i < n; i++) {
        if (kv[i].t == KV_REQ && kv[i].s == NULL) {
            return sbx_err_param(err, kv[i].k, "%s: \"%s\" is required", method, kv[i].k);
        }
        /* A str must be UTF-8 (§4.3); a strict agent would refuse the whole message. */
        if ((kv[i].t == KV_STR && !sbx_utf8_valid(kv[i].s, strlen(kv[i].s))) ||
            (kv[i].t == KV_STRN && !sbx_utf8_valid(kv[i].s, kv[i].n))) {
            return sbx_err_param(err, kv[i].k, "%s: \"%s\" is not valid UTF-8", method, kv[i].k);
        }
        for (size_t j = 0; kv[i].t == KV_STRV && j < kv[i].n; j++) {
            if (((const char *const *)kv[i].p)[j] == NULL) {
                return sbx_err_param(err, kv[i].k, "%s: %s[%zu] is NULL", method, kv[i].k, j);
            }
        }
        count += kv[i].t != KV_SKIP;
    }
    pk = sbx_conn_begin(c, method, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    (void)msgpack_pack_map(pk, count);
    for (size_t i = 0; i < n; i++) {
        if (kv[i].t != KV_SKIP) {
            pack_kv(pk, &kv[i]);
        }
    }
    if (who != NULL) {
        sbx_pack_kv_str(pk, "user", who);
    }
    return sbx_conn_commit(c, err);
}

/* A method whose params are empty. */
static int call0(struct sbx_conn *c, enum sbx_call call, void *user, uint32_t *id,
                 struct sbx_err *err)
{
    return call_kv(c, call, NULL, 0, user, id, err);
}

/* A method whose only params are one u32 id under @key. */
static int call_id(struct sbx_conn *c, enum sbx_call call, const char *key, uint32_t v, void *user,
                   uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64(key, v) };

    return call_kv(c, call, kv, ARRAY_SIZE(kv), user, id, err);
}

/* A method whose params are {path, cwd?}. */
static int call_path(struct sbx_conn *c, enum sbx_call call, const char *path, const char *cwd,
                     void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("path", path), kv_bstr("cwd", cwd) };

    return call_kv(c, call, kv, ARRAY_SIZE(kv), user, id, err);
}

/* --- session ------------------------------------------------------------------------------- */

int sbx_ping(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_PING, user, id, err);
}

int sbx_info(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_INFO, user, id, err);
}

int sbx_shutdown(struct sbx_conn *c, bool reboot, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_str("action", reboot ? "reboot" : "poweroff") };

    return call_kv(c, SBX_CALL_SHUTDOWN, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_lifetime_get(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_LIFETIME_GET, user, id, err);
}

int sbx_lifetime_extend(struct sbx_conn *c, uint64_t seconds, void *user, uint32_t *id,
                        struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("seconds", seconds) };

    return call_kv(c, SBX_CALL_LIFETIME_EXTEND, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_clock_set(struct sbx_conn *c, int64_t unix_ns, int64_t threshold_ns, void *user,
                  uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_i64("unix_ns", unix_ns),
        kv_u64_if(threshold_ns >= 0, "threshold_ns", (uint64_t)threshold_ns),
    };

    return call_kv(c, SBX_CALL_CLOCK_SET, kv, ARRAY_SIZE(kv), user, id, err);
}

/* --- env ----------------------------------------------------------------------------------- */

int sbx_env_get(struct sbx_conn *c, const char *name, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("name", name) };

    return call_kv(c, SBX_CALL_ENV_GET, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_env_set(struct sbx_conn *c, const char *name, const char *value, void *user, uint32_t *id,
                struct sbx_err *err)
{
    msgpack_packer *pk;

    if (name == NULL) {
        return sbx_err_param(err, "name", "env.set: \"name\" is required");
    }
    if (value != NULL) {
        const struct kv kv[] = { kv_path("name", name), kv_path("value", value) };
        return call_kv(c, SBX_CALL_ENV_SET, kv, ARRAY_SIZE(kv), user, id, err);
    }
    /* Unset through the vars form: {vars: {name: nil}} (§13.2). */
    pk = sbx_conn_begin(c, SBX_M_ENV_SET, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "vars");
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_bstr(pk, name, strlen(name));
    (void)msgpack_pack_nil(pk);
    return sbx_conn_commit(c, err);
}

int sbx_env_set_vars(struct sbx_conn *c, const char *const *vars, size_t n, void *user,
                     uint32_t *id, struct sbx_err *err)
{
    msgpack_packer *pk;

    for (size_t i = 0; i < n; i++) {
        if (vars == NULL || vars[i] == NULL || vars[i][0] == '=' || vars[i][0] == '\0') {
            return sbx_err_param(err, "vars", "env.set: vars[%zu] is not NAME=VALUE or NAME", i);
        }
    }
    if (n == 0) {
        return sbx_err_param(err, "vars", "env.set: no variables");
    }
    pk = sbx_conn_begin(c, SBX_M_ENV_SET, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "vars");
    (void)msgpack_pack_map(pk, n);
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(vars[i], '=');

        sbx_pack_bstr(pk, vars[i], eq != NULL ? (size_t)(eq - vars[i]) : strlen(vars[i]));
        if (eq != NULL) {
            sbx_pack_bstr(pk, eq + 1, strlen(eq + 1));
        } else {
            (void)msgpack_pack_nil(pk);
        }
    }
    return sbx_conn_commit(c, err);
}

int sbx_env_unset(struct sbx_conn *c, const char *name, void *user, uint32_t *id,
                  struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("name", name) };

    return call_kv(c, SBX_CALL_ENV_UNSET, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_env_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_ENV_LIST, user, id, err);
}

/* --- process ------------------------------------------------------------------------------- */

int sbx_proc_spawn(struct sbx_conn *c, const struct sbx_spawn_params *p, void *user, uint32_t *id,
                   struct sbx_err *err)
{
    msgpack_packer *pk;

    if (p == NULL || (p->argv == NULL) == (p->command == NULL) ||
        (p->argv != NULL && p->argv[0] == NULL)) {
        return sbx_err_param(err, "argv",
                             "proc.spawn: give exactly one of a non-empty argv and "
                             "command");
    }
    if (p->pty != NULL && sbx_conn_peer(c) != NULL && !sbx_conn_has_cap(c, "pty")) {
        (void)sbx_err_set(err, SBX_E_UNSUPPORTED,
                          "proc.spawn: the agent does not announce capability pty");
        (void)snprintf(err->field, sizeof(err->field), "pty");
        return -1;
    }
    pk = sbx_conn_begin(c, SBX_M_PROC_SPAWN, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    sbx_spawn_params_pack(pk, p);
    return sbx_conn_commit(c, err);
}

int sbx_proc_wait(struct sbx_conn *c, uint32_t proc, uint32_t timeout_ms, void *user, uint32_t *id,
                  struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_u64("id", proc),
        kv_u64_if(timeout_ms != 0, "timeout_ms", timeout_ms),
    };

    return call_kv(c, SBX_CALL_PROC_WAIT, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_proc_kill(struct sbx_conn *c, uint32_t proc, int signo, bool group, void *user,
                  uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_u64("id", proc),
        kv_u64_if(signo != 0, "signal", (uint64_t)signo),
        kv_true_if("group", group),
    };

    if (signo < 0 || signo > 64) {
        return sbx_err_param(err, "signal", "proc.kill: signal %d is not in 1..64", signo);
    }
    return call_kv(c, SBX_CALL_PROC_KILL, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_proc_close_stdin(struct sbx_conn *c, uint32_t proc, void *user, uint32_t *id,
                         struct sbx_err *err)
{
    return call_id(c, SBX_CALL_PROC_CLOSE_STDIN, "id", proc, user, id, err);
}

int sbx_proc_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_PROC_LIST, user, id, err);
}

int sbx_proc_release(struct sbx_conn *c, uint32_t proc, void *user, uint32_t *id,
                     struct sbx_err *err)
{
    return call_id(c, SBX_CALL_PROC_RELEASE, "id", proc, user, id, err);
}

int sbx_proc_resize(struct sbx_conn *c, uint32_t proc, uint32_t rows, uint32_t cols, void *user,
                    uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("id", proc), kv_u64("rows", rows), kv_u64("cols", cols) };

    return call_kv(c, SBX_CALL_PROC_RESIZE, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_proc_attach(struct sbx_conn *c, const struct sbx_attach_params *p, void *user, uint32_t *id,
                    struct sbx_err *err)
{
    msgpack_packer *pk;

    if (p == NULL) {
        return sbx_err_param(err, "id", "proc.attach: no params");
    }
    pk = sbx_conn_begin(c, SBX_M_PROC_ATTACH, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    sbx_attach_params_pack(pk, p);
    return sbx_conn_commit(c, err);
}

/* --- fs: paths ------------------------------------------------------------------------------ */

int sbx_fs_stat(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                struct sbx_err *err)
{
    return call_path(c, SBX_CALL_FS_STAT, path, cwd, user, id, err);
}

int sbx_fs_lstat(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                 struct sbx_err *err)
{
    return call_path(c, SBX_CALL_FS_LSTAT, path, cwd, user, id, err);
}

int sbx_fs_readlink(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                    struct sbx_err *err)
{
    return call_path(c, SBX_CALL_FS_READLINK, path, cwd, user, id, err);
}

int sbx_fs_realpath(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                    struct sbx_err *err)
{
    return call_path(c, SBX_CALL_FS_REALPATH, path, cwd, user, id, err);
}

int sbx_fs_readdir(struct sbx_conn *c, const char *path, const char *cursor, uint32_t limit,
                   const char *cwd, void *user, uint32_t *id, struct sbx_err *err)
{
    /* With a cursor the path may be omitted (§17.3). */
    const struct kv kv[] = {
        cursor != NULL ? kv_bstr("path", path) : kv_path("path", path),
        kv_str("cursor", cursor),
        kv_u64_if(limit != 0, "limit", limit),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_READDIR, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_mkdir(struct sbx_conn *c, const char *path, bool parents, int mode, const char *cwd,
                 void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_true_if("parents", parents),
        kv_u64_if(mode >= 0, "mode", (uint64_t)mode),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_MKDIR, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_remove(struct sbx_conn *c, const char *path, bool recursive, const char *cwd, void *user,
                  uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_true_if("recursive", recursive),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_REMOVE, kv, ARRAY_SIZE(kv), user, id, err);
}

/* A method whose params are {<k1>, <k2>, recursive?, cwd?}. */
static int call_two(struct sbx_conn *c, enum sbx_call call, const char *k1, const char *v1,
                    const char *k2, const char *v2, bool recursive, const char *cwd, void *user,
                    uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path(k1, v1),
        kv_path(k2, v2),
        kv_true_if("recursive", recursive),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, call, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_rename(struct sbx_conn *c, const char *from, const char *to, const char *cwd, void *user,
                  uint32_t *id, struct sbx_err *err)
{
    return call_two(c, SBX_CALL_FS_RENAME, "from", from, "to", to, false, cwd, user, id, err);
}

int sbx_fs_copy(struct sbx_conn *c, const char *from, const char *to, bool recursive,
                const char *cwd, void *user, uint32_t *id, struct sbx_err *err)
{
    return call_two(c, SBX_CALL_FS_COPY, "from", from, "to", to, recursive, cwd, user, id, err);
}

int sbx_fs_symlink(struct sbx_conn *c, const char *target, const char *path, const char *cwd,
                   void *user, uint32_t *id, struct sbx_err *err)
{
    return call_two(c, SBX_CALL_FS_SYMLINK, "target", target, "path", path, false, cwd, user, id,
                    err);
}

int sbx_fs_link(struct sbx_conn *c, const char *target, const char *path, const char *cwd,
                void *user, uint32_t *id, struct sbx_err *err)
{
    return call_two(c, SBX_CALL_FS_LINK, "target", target, "path", path, false, cwd, user, id, err);
}

int sbx_fs_chmod(struct sbx_conn *c, const char *path, uint32_t mode, const char *cwd, void *user,
                 uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("path", path), kv_u64("mode", mode), kv_bstr("cwd", cwd) };

    return call_kv(c, SBX_CALL_FS_CHMOD, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_chown(struct sbx_conn *c, const char *path, int64_t uid, int64_t gid, const char *cwd,
                 void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_u64_if(uid >= 0, "uid", (uint64_t)uid),
        kv_u64_if(gid >= 0, "gid", (uint64_t)gid),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_CHOWN, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_truncate(struct sbx_conn *c, const char *path, uint64_t size, const char *cwd,
                    void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("path", path), kv_u64("size", size), kv_bstr("cwd", cwd) };

    return call_kv(c, SBX_CALL_FS_TRUNCATE, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_utime(struct sbx_conn *c, const char *path, const int64_t *atime_ns,
                 const int64_t *mtime_ns, const char *cwd, void *user, uint32_t *id,
                 struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_i64_if(atime_ns != NULL, "atime_ns", atime_ns != NULL ? *atime_ns : 0),
        kv_i64_if(mtime_ns != NULL, "mtime_ns", mtime_ns != NULL ? *mtime_ns : 0),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_UTIME, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_mktemp(struct sbx_conn *c, const char *dir, const char *prefix, const char *suffix,
                  bool directory, const char *cwd, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_bstr("dir", dir),       kv_bstr("prefix", prefix),
        kv_bstr("suffix", suffix), kv_true_if("directory", directory),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_MKTEMP, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_watch(struct sbx_conn *c, const char *path, bool recursive, const char *cwd, void *user,
                 uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_true_if("recursive", recursive),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_WATCH, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_unwatch(struct sbx_conn *c, uint32_t watch, void *user, uint32_t *id,
                   struct sbx_err *err)
{
    return call_id(c, SBX_CALL_FS_UNWATCH, "watch", watch, user, id, err);
}

/* --- fs: handles ---------------------------------------------------------------------------- */

int sbx_fs_open(struct sbx_conn *c, const char *path, unsigned flags, int mode, const char *cwd,
                void *user, uint32_t *id, struct sbx_err *err)
{
    static const char *const names[] = { "read",     "write",     "append",   "create",
                                         "truncate", "exclusive", "nofollow", "sync" };
    const char *set[ARRAY_SIZE(names)];
    size_t nflags = 0;

    if ((flags & ~((1u << ARRAY_SIZE(names)) - 1)) != 0) {
        return sbx_err_param(err, "flags", "fs.open: unknown flag bits 0x%x", flags);
    }
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if ((flags >> i) & 1) {
            set[nflags++] = names[i];
        }
    }
    const struct kv kv[] = {
        kv_path("path", path),
        kv_strv("flags", set, nflags),
        kv_u64_if(mode >= 0, "mode", (uint64_t)mode),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_FS_OPEN, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_read(struct sbx_conn *c, uint32_t fh, uint64_t len, const uint64_t *offset, void *user,
                uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_u64("fh", fh),
        kv_u64("len", len),
        kv_u64_if(offset != NULL, "offset", offset != NULL ? *offset : 0),
    };

    return call_kv(c, SBX_CALL_FS_READ, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_write(struct sbx_conn *c, uint32_t fh, const void *data, size_t len,
                 const uint64_t *offset, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct sbx_peer *peer = sbx_conn_peer(c);
    uint64_t max = peer != NULL ? peer->limits.chunk_max : SBX_STREAM_CHUNK_MAX;
    const struct kv kv[] = {
        kv_u64("fh", fh),
        kv_bin("data", data, len),
        kv_u64_if(offset != NULL, "offset", offset != NULL ? *offset : 0),
    };

    if (len == 0 || data == NULL) {
        return sbx_err_param(err, "data", "fs.write: data must hold 1..%llu bytes",
                             (unsigned long long)max);
    }
    if (len > max) {
        return sbx_err_limit(err, "chunk_max", max, "fs.write: %zu bytes exceed chunk_max %llu",
                             len, (unsigned long long)max);
    }
    return call_kv(c, SBX_CALL_FS_WRITE, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_seek(struct sbx_conn *c, uint32_t fh, int64_t offset, const char *whence, void *user,
                uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("fh", fh), kv_i64("offset", offset), kv_str("whence", whence) };

    return call_kv(c, SBX_CALL_FS_SEEK, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_fstat(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err)
{
    return call_id(c, SBX_CALL_FS_FSTAT, "fh", fh, user, id, err);
}

int sbx_fs_fsync(struct sbx_conn *c, uint32_t fh, bool data_only, void *user, uint32_t *id,
                 struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("fh", fh), kv_true_if("data_only", data_only) };

    return call_kv(c, SBX_CALL_FS_FSYNC, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_ftruncate(struct sbx_conn *c, uint32_t fh, uint64_t size, void *user, uint32_t *id,
                     struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("fh", fh), kv_u64("size", size) };

    return call_kv(c, SBX_CALL_FS_FTRUNCATE, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_close(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err)
{
    return call_id(c, SBX_CALL_FS_CLOSE, "fh", fh, user, id, err);
}

int sbx_fs_futimes(struct sbx_conn *c, uint32_t fh, const int64_t *atime_ns,
                   const int64_t *mtime_ns, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_u64("fh", fh),
        kv_i64_if(atime_ns != NULL, "atime_ns", atime_ns != NULL ? *atime_ns : 0),
        kv_i64_if(mtime_ns != NULL, "mtime_ns", mtime_ns != NULL ? *mtime_ns : 0),
    };

    return call_kv(c, SBX_CALL_FS_FUTIMES, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_flock(struct sbx_conn *c, uint32_t fh, bool exclusive, bool wait, void *user,
                 uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64("fh", fh), kv_bool("exclusive", exclusive),
                             kv_true_if("wait", wait) };

    return call_kv(c, SBX_CALL_FS_FLOCK, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_funlock(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err)
{
    return call_id(c, SBX_CALL_FS_FUNLOCK, "fh", fh, user, id, err);
}

int sbx_fs_umask(struct sbx_conn *c, int mask, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = { kv_u64_if(mask >= 0, "mask", (uint64_t)mask) };

    if (mask > 0777) {
        return sbx_err_param(err, "mask", "fs.umask: mask %#o is above 0777", (unsigned)mask);
    }
    return call_kv(c, SBX_CALL_FS_UMASK, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_walk(struct sbx_conn *c, const struct sbx_walk_params *p, void *user, uint32_t *id,
                struct sbx_err *err)
{
    if (p == NULL) {
        return sbx_err_param(err, "path", "fs.walk: \"path\" is required");
    }
    const struct kv kv[] = {
        kv_path("path", p->path),
        kv_u64_if(p->has_max_depth, "max_depth", p->max_depth),
        kv_false_if("include_files", p->no_files),
        kv_false_if("include_dirs", p->no_dirs),
        kv_false_if("include_symlinks", p->no_symlinks),
        kv_true_if("follow_symlinks", p->follow_symlinks),
        kv_strv("exts", p->exts, p->nexts),
        kv_strv("match", p->match, p->nmatch),
        kv_strv("skip", p->skip, p->nskip),
        kv_bstr("cwd", p->cwd),
    };

    return call_kv(c, SBX_CALL_FS_WALK, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_fs_glob(struct sbx_conn *c, const struct sbx_glob_params *p, void *user, uint32_t *id,
                struct sbx_err *err)
{
    if (p == NULL) {
        return sbx_err_param(err, "pattern", "fs.glob: \"pattern\" is required");
    }
    const struct kv kv[] = {
        kv_path("pattern", p->pattern),
        kv_bstr("root", p->root),
        kv_false_if("include_dirs", p->no_dirs),
        kv_true_if("follow_symlinks", p->follow_symlinks),
        kv_strv("exclude", p->exclude, p->nexclude),
        kv_bstr("cwd", p->cwd),
    };

    return call_kv(c, SBX_CALL_FS_GLOB, kv, ARRAY_SIZE(kv), user, id, err);
}

/* --- transfer ----------------------------------------------------------------------------- */

int sbx_transfer_upload(struct sbx_conn *c, const struct sbx_upload_params *p, void *user,
                        uint32_t *id, struct sbx_err *err)
{
    if (p == NULL) {
        return sbx_err_param(err, "path", "transfer.upload: \"path\" is required");
    }
    const struct kv kv[] = {
        kv_path("path", p->path),
        kv_u64_if(p->has_mode, "mode", p->mode),
        kv_u64_if(p->has_uid, "uid", p->uid),
        kv_u64_if(p->has_gid, "gid", p->gid),
        kv_true_if("parents", p->parents),
        kv_false_if("overwrite", p->no_overwrite),
        kv_true_if("fsync", p->fsync),
        kv_u64_if(p->has_size, "size", p->size),
        kv_str("sha256", p->sha256),
        kv_false_if("hash", p->no_hash),
        kv_bstr("cwd", p->cwd),
    };

    return call_kv(c, SBX_CALL_TRANSFER_UPLOAD, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_transfer_download(struct sbx_conn *c, const char *path, uint64_t offset, int64_t length,
                          const char *cwd, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_u64_if(offset != 0, "offset", offset),
        kv_u64_if(length >= 0, "length", (uint64_t)length),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_TRANSFER_DOWNLOAD, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_transfer_upload_tree(struct sbx_conn *c, const char *path, const char *compress,
                             bool preserve_owner, const char *cwd, void *user, uint32_t *id,
                             struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_str("compress", compress),
        kv_true_if("preserve_owner", preserve_owner),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_TRANSFER_UPLOAD_TREE, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_transfer_download_tree(struct sbx_conn *c, const char *path, const char *compress,
                               const char *cwd, void *user, uint32_t *id, struct sbx_err *err)
{
    const struct kv kv[] = {
        kv_path("path", path),
        kv_str("compress", compress),
        kv_bstr("cwd", cwd),
    };

    return call_kv(c, SBX_CALL_TRANSFER_DOWNLOAD_TREE, kv, ARRAY_SIZE(kv), user, id, err);
}

/* --- pack ---------------------------------------------------------------------------------- */

int sbx_pack_create(struct sbx_conn *c, const struct sbx_pack_params *p, void *user, uint32_t *id,
                    struct sbx_err *err)
{
    if (p == NULL) {
        return sbx_err_param(err, "path", "pack.create: \"path\" is required");
    }
    if (p->build != NULL && (p->build->argv == NULL) == (p->build->command == NULL)) {
        return sbx_err_param(err, "build",
                             "pack.create: give the build exactly one of argv "
                             "and command");
    }
    const struct kv kv[] = {
        kv_path("path", p->path),
        kv_path("format", p->format),
        { .k = "build", .t = p->build != NULL ? KV_SPAWN : KV_SKIP, .p = p->build },
        kv_bstr("entrypoint", p->entrypoint),
        kv_strv("args", p->args, p->nargs),
        kv_strv("exclude", p->exclude, p->nexclude),
        { .k = "ignore_files",
          .t = p->ignore_files != NULL ? KV_STRV : KV_SKIP,
          .p = p->ignore_files,
          .n = p->nignore_files },
        kv_bstr("cwd", p->cwd),
    };

    return call_kv(c, SBX_CALL_PACK_CREATE, kv, ARRAY_SIZE(kv), user, id, err);
}

/* --- repl ---------------------------------------------------------------------------------- */

int sbx_repl_start(struct sbx_conn *c, const char *language, void *user, uint32_t *id,
                   struct sbx_err *err)
{
    const struct kv kv[] = { kv_path("language", language) };

    return call_kv(c, SBX_CALL_REPL_START, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_repl_eval(struct sbx_conn *c, uint32_t session, const char *code, size_t len,
                  uint32_t timeout_ms, bool stream, void *user, uint32_t *id, struct sbx_err *err)
{
    return sbx_repl_eval_as(c, session, code, len, timeout_ms, stream, NULL, user, id, err);
}

int sbx_repl_eval_as(struct sbx_conn *c, uint32_t session, const char *code, size_t len,
                     uint32_t timeout_ms, bool stream, const char *format, void *user, uint32_t *id,
                     struct sbx_err *err)
{
    bool json = format != NULL && strcmp(format, "text") != 0;
    const struct kv kv[] = {
        kv_u64("session", session),
        kv_strn("code", code, len),
        kv_u64_if(timeout_ms != 0, "timeout_ms", timeout_ms),
        kv_true_if("stream", stream),
        kv_str("format", json ? format : NULL),
    };

    if (code == NULL) {
        return sbx_err_param(err, "code", "repl.eval: \"code\" is required");
    }
    if (json && strcmp(format, "json") != 0) {
        return sbx_err_param(err, "format", "repl.eval: format must be \"text\" or \"json\"");
    }
    if (json && !sbx_conn_has_cap(c, "repl.json")) {
        return sbx_err_set(err, SBX_E_UNSUPPORTED,
                           "repl.eval: the agent does not support format \"json\" (capability "
                           "repl.json)");
    }
    return call_kv(c, SBX_CALL_REPL_EVAL, kv, ARRAY_SIZE(kv), user, id, err);
}

int sbx_repl_close(struct sbx_conn *c, uint32_t session, void *user, uint32_t *id,
                   struct sbx_err *err)
{
    return call_id(c, SBX_CALL_REPL_CLOSE, "session", session, user, id, err);
}

int sbx_repl_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_REPL_LIST, user, id, err);
}

/* --- net ----------------------------------------------------------------------------------- */

int sbx_net_connect(struct sbx_conn *c, const struct sbx_net_connect_params *p, void *user,
                    uint32_t *id, struct sbx_err *err)
{
    msgpack_packer *pk;

    if (p == NULL || p->port == 0 || p->port > 65535) {
        return sbx_err_param(err, "port", "net.connect: the port must be in 1..65535");
    }
    if (p->host != NULL && (p->host[0] == '\0' || strlen(p->host) > SBX_NET_HOST_MAX ||
                            !sbx_utf8_valid(p->host, strlen(p->host)))) {
        return sbx_err_param(err, "host", "net.connect: the host must be 1..%d bytes of UTF-8",
                             SBX_NET_HOST_MAX);
    }
    pk = sbx_conn_begin(c, SBX_M_NET_CONNECT, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    sbx_net_connect_params_pack(pk, p);
    return sbx_conn_commit(c, err);
}

int sbx_net_listening(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err)
{
    return call0(c, SBX_CALL_NET_LISTENING, user, id, err);
}
