/*
 * Wire records the connection core needs that protocol/schema.c does not define yet: proc.spawn
 * params (§14.2, §15.1), the one-stream results of transfer.* / fs.walk / fs.glob (§17.4, §18),
 * repl.eval's stream result (§16.3) and pack.create's result (§19.1). Written like schema.c (one
 * pack and one read function per record) so they can move there unchanged.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sbx/conn.h"

/* --- helpers ------------------------------------------------------------------------------- */

/* A record from the peer that breaks its table is a bad message, not a bad param of ours. */
static int bad_message(struct sbx_err *err, const char *what)
{
    sbx_err_prefix(err, "%s", what);
    memcpy(err->code, SBX_E_BAD_MESSAGE, sizeof(SBX_E_BAD_MESSAGE));
    return -1;
}

/* BAD_PARAM with a formatted field path ("argv[3]", "pty.rows"). */
__attribute__((format(printf, 3, 4))) static int param_at(struct sbx_err *err, const char *what,
                                                          const char *fmt, ...)
{
    char field[SBX_ERR_FIELD_MAX];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(field, sizeof(field), fmt, ap);
    va_end(ap);
    return sbx_err_param(err, field, "%s %s", field, what);
}

/* An OS byte string (str or bin, §4.4) of at most @max bytes without NUL. */
static bool bstr_ok(const msgpack_object *o, size_t max, const char **p, size_t *n)
{
    return sbx_obj_bytes(o, p, n) && *n <= max && memchr(*p, '\0', *n) == NULL;
}

/* An optional bstr param: 0 found (*p, *n set), 1 absent or nil, -1 BAD_PARAM. */
static int param_bstr(const msgpack_object *params, const char *key, size_t max, const char **p,
                      size_t *n, struct sbx_err *err)
{
    const msgpack_object *o = sbx_obj_get(params, key);

    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        return 1;
    }
    if (!bstr_ok(o, max, p, n)) {
        return sbx_err_param(err, key, "%s must be a byte string of at most %zu bytes without NUL",
                             key, max);
    }
    return 0;
}

/* An optional str param without NUL: 0 found, 1 absent, -1 BAD_PARAM. */
static int param_text(const msgpack_object *params, const char *key, size_t max, const char **p,
                      size_t *n, struct sbx_err *err)
{
    int r = sbx_param_str(params, key, SBX_OPTIONAL, max, p, n, err);

    if (r == 0 && memchr(*p, '\0', *n) != NULL) {
        return sbx_err_param(err, key, "%s contains a NUL byte", key);
    }
    return r;
}

/* A required sid of a result read from the peer. */
static int need_sid(const msgpack_object *o, const char *key, uint32_t *sid, struct sbx_err *err)
{
    uint64_t v;

    if (sbx_param_u64(o, key, SBX_REQUIRED, 1, UINT32_MAX, &v, err) != 0) {
        return -1;
    }
    *sid = (uint32_t)v;
    return 0;
}

/* An optional sid (absent: 0). */
static int opt_sid(const msgpack_object *o, const char *key, uint32_t *sid, struct sbx_err *err)
{
    uint64_t v;
    int r = sbx_param_u64(o, key, SBX_OPTIONAL, 1, UINT32_MAX, &v, err);

    *sid = r == 0 ? (uint32_t)v : 0;
    return r < 0 ? -1 : 0;
}

/* --- proc.spawn params (§14.2, §15.1) ------------------------------------------------------- */

static const char *const stdio_names[] = { NULL, "pipe", "null", "stdout" };

static uint32_t count_strv(const char *const *v)
{
    uint32_t n = 0;

    while (v != NULL && v[n] != NULL) {
        n++;
    }
    return n;
}

static void pack_stdio(msgpack_packer *pk, const char *key, enum sbx_stdio m)
{
    if (m > SBX_STDIO_DEFAULT && m <= SBX_STDIO_STDOUT) {
        sbx_pack_kv_str(pk, key, stdio_names[m]);
    }
}

static bool stdio_set(enum sbx_stdio m)
{
    return m > SBX_STDIO_DEFAULT && m <= SBX_STDIO_STDOUT;
}

/* env entries "NAME=VALUE" (set) and "NAME" (remove: nil). */
static void pack_env(msgpack_packer *pk, const char *const *env)
{
    uint32_t n = count_strv(env);

    (void)msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        const char *eq = strchr(env[i], '=');
        if (eq != NULL) {
            sbx_pack_bstr(pk, env[i], (size_t)(eq - env[i]));
            sbx_pack_bstr(pk, eq + 1, strlen(eq + 1));
        } else {
            sbx_pack_bstr(pk, env[i], strlen(env[i]));
            (void)msgpack_pack_nil(pk);
        }
    }
}

static void pack_pty(msgpack_packer *pk, const struct sbx_pty_params *t)
{
    (void)msgpack_pack_map(pk, (t->rows != 0) + (t->cols != 0) + (t->term != NULL));
    if (t->rows != 0) {
        sbx_pack_kv_u64(pk, "rows", t->rows);
    }
    if (t->cols != 0) {
        sbx_pack_kv_u64(pk, "cols", t->cols);
    }
    if (t->term != NULL) {
        sbx_pack_kv_str(pk, "term", t->term);
    }
}

void sbx_spawn_params_pack(msgpack_packer *pk, const struct sbx_spawn_params *p)
{
    uint32_t nargv = count_strv(p->argv);
    uint32_t n = (p->argv != NULL) + (p->command != NULL) + (p->env != NULL) + p->clear_env +
                 (p->cwd != NULL) + (p->user != NULL) + p->has_uid + p->has_gid + p->has_groups +
                 stdio_set(p->stdin_mode) + stdio_set(p->stdout_mode) + stdio_set(p->stderr_mode) +
                 (p->timeout_ms != 0) + (p->kill_signal != 0) + p->has_kill_grace_ms +
                 p->has_drain_ms + (p->pty != NULL) + (p->tag != NULL);

    (void)msgpack_pack_map(pk, n);
    if (p->argv != NULL) {
        sbx_pack_cstr(pk, "argv");
        (void)msgpack_pack_array(pk, nargv);
        for (uint32_t i = 0; i < nargv; i++) {
            sbx_pack_bstr(pk, p->argv[i], strlen(p->argv[i]));
        }
    }
    if (p->command != NULL) {
        sbx_pack_cstr(pk, "command");
        sbx_pack_bstr(pk, p->command, strlen(p->command));
    }
    if (p->env != NULL) {
        sbx_pack_cstr(pk, "env");
        pack_env(pk, p->env);
    }
    if (p->clear_env) {
        sbx_pack_kv_bool(pk, "clear_env", true);
    }
    if (p->cwd != NULL) {
        sbx_pack_cstr(pk, "cwd");
        sbx_pack_bstr(pk, p->cwd, strlen(p->cwd));
    }
    if (p->user != NULL) {
        sbx_pack_kv_str(pk, "user", p->user);
    }
    if (p->has_uid) {
        sbx_pack_kv_u64(pk, "uid", p->uid);
    }
    if (p->has_gid) {
        sbx_pack_kv_u64(pk, "gid", p->gid);
    }
    if (p->has_groups) {
        sbx_pack_cstr(pk, "groups");
        (void)msgpack_pack_array(pk, p->ngroups);
        for (uint32_t i = 0; i < p->ngroups; i++) {
            (void)msgpack_pack_uint32(pk, p->groups[i]);
        }
    }
    pack_stdio(pk, "stdin", p->stdin_mode);
    pack_stdio(pk, "stdout", p->stdout_mode);
    pack_stdio(pk, "stderr", p->stderr_mode);
    if (p->timeout_ms != 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", p->timeout_ms);
    }
    if (p->kill_signal != 0) {
        sbx_pack_kv_i64(pk, "kill_signal", p->kill_signal);
    }
    if (p->has_kill_grace_ms) {
        sbx_pack_kv_u64(pk, "kill_grace_ms", p->kill_grace_ms);
    }
    if (p->has_drain_ms) {
        sbx_pack_kv_u64(pk, "drain_ms", p->drain_ms);
    }
    if (p->pty != NULL) {
        sbx_pack_cstr(pk, "pty");
        pack_pty(pk, p->pty);
    }
    if (p->tag != NULL) {
        sbx_pack_kv_str(pk, "tag", p->tag);
    }
}

/* argv or command, exactly one. */
static int read_program(const msgpack_object *params, struct sbx_spawn_params *p,
                        struct sbx_err *err)
{
    const char *s;
    size_t n;
    int ra, rc;

    ra = sbx_param_array(params, "argv", SBX_OPTIONAL, SBX_ARGV_MAX, &p->argvv, err);
    if (ra < 0) {
        return -1;
    }
    rc = param_bstr(params, "command", SBX_ARG_MAX, &p->command, &p->command_len, err);
    if (rc < 0) {
        return -1;
    }
    if ((ra == 0) == (rc == 0)) {
        return sbx_err_param(err, "argv", "give exactly one of \"argv\" and \"command\"");
    }
    if (ra != 0) {
        return 0;
    }
    if (p->argvv->via.array.size == 0) {
        return sbx_err_param(err, "argv", "argv must not be empty");
    }
    for (uint32_t i = 0; i < p->argvv->via.array.size; i++) {
        if (!bstr_ok(&p->argvv->via.array.ptr[i], SBX_ARG_MAX, &s, &n)) {
            return param_at(err, "must be a byte string of at most 131072 bytes without NUL",
                            "argv[%u]", i);
        }
    }
    return 0;
}

/* env: {bstr: bstr|nil}, names 1..256 bytes without '=', values up to 128 KiB (§13). */
static int read_env(const msgpack_object *params, struct sbx_spawn_params *p, struct sbx_err *err)
{
    const char *s;
    size_t n;

    if (sbx_param_map(params, "env", SBX_OPTIONAL, SBX_ENV_MAX, &p->envv, err) < 0) {
        return -1;
    }
    for (uint32_t i = 0; p->envv != NULL && i < p->envv->via.map.size; i++) {
        const msgpack_object_kv *kv = &p->envv->via.map.ptr[i];
        if (!bstr_ok(&kv->key, SBX_ENV_NAME_MAX, &s, &n) || n == 0 || memchr(s, '=', n) != NULL) {
            return sbx_err_param(err, "env",
                                 "env entry %u: a name is 1..%u bytes without '=' "
                                 "or NUL",
                                 i, SBX_ENV_NAME_MAX);
        }
        if (kv->val.type != MSGPACK_OBJECT_NIL && !bstr_ok(&kv->val, SBX_ENV_VAL_MAX, &s, &n)) {
            return sbx_err_param(err, "env",
                                 "env entry %u: a value is nil or at most %u bytes "
                                 "without NUL",
                                 i, SBX_ENV_VAL_MAX);
        }
    }
    return 0;
}

/* user, uid, gid, groups. */
static int read_identity(const msgpack_object *params, struct sbx_spawn_params *p,
                         struct sbx_err *err)
{
    uint64_t v;
    int r;

    if (param_text(params, "user", 256, &p->user, &p->user_len, err) < 0) {
        return -1;
    }
    r = sbx_param_u64(params, "uid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_uid = r == 0;
    p->uid = (uint32_t)v;
    if (p->has_uid && p->user != NULL) {
        return sbx_err_param(err, "uid", "give at most one of \"user\" and \"uid\"");
    }
    r = sbx_param_u64(params, "gid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_gid = r == 0;
    p->gid = (uint32_t)v;
    if (sbx_param_array(params, "groups", SBX_OPTIONAL, SBX_GROUPS_MAX, &p->groupsv, err) < 0) {
        return -1;
    }
    p->has_groups = p->groupsv != NULL;
    for (uint32_t i = 0; p->groupsv != NULL && i < p->groupsv->via.array.size; i++) {
        const msgpack_object *g = &p->groupsv->via.array.ptr[i];
        if (g->type != MSGPACK_OBJECT_POSITIVE_INTEGER || g->via.u64 > UINT32_MAX - 1) {
            return param_at(err, "must be a group id in 0..4294967294", "groups[%u]", i);
        }
    }
    p->ngroups = p->has_groups ? p->groupsv->via.array.size : 0;
    return 0;
}

static int read_stdio(const msgpack_object *params, const char *key, bool merge, enum sbx_stdio *m,
                      struct sbx_err *err)
{
    const char *s;
    size_t n;
    int r = sbx_param_str(params, key, SBX_OPTIONAL, 16, &s, &n, err);

    *m = SBX_STDIO_DEFAULT;
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    for (int i = SBX_STDIO_PIPE; i <= (merge ? SBX_STDIO_STDOUT : SBX_STDIO_NULL); i++) {
        if (strlen(stdio_names[i]) == n && memcmp(stdio_names[i], s, n) == 0) {
            *m = (enum sbx_stdio)i;
            return 0;
        }
    }
    return sbx_err_param(err, key, "%s must be \"pipe\" or \"null\"%s", key,
                         merge ? " or \"stdout\"" : "");
}

/* kill_signal: a name (Appendix A) or a number 1..64. */
static int read_signal(const msgpack_object *params, struct sbx_spawn_params *p,
                       struct sbx_err *err)
{
    const msgpack_object *o = sbx_obj_get(params, "kill_signal");
    char name[32];

    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 >= 1 && o->via.u64 <= 64) {
        p->kill_signal = (int)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_STR && o->via.str.size < sizeof(name)) {
        memcpy(name, o->via.str.ptr, o->via.str.size);
        name[o->via.str.size] = '\0';
        p->kill_signal = strlen(name) == o->via.str.size ? sbx_signal_parse(name) : -1;
        if (p->kill_signal > 0) {
            return 0;
        }
    }
    p->kill_signal = 0;
    return sbx_err_param(err, "kill_signal", "kill_signal must be a signal name or 1..64");
}

static int read_timing(const msgpack_object *params, struct sbx_spawn_params *p,
                       struct sbx_err *err)
{
    uint64_t v = 0;
    int r;

    if (sbx_param_u64(params, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &v, err) < 0) {
        return -1;
    }
    p->timeout_ms = (uint32_t)v;
    r = sbx_param_u64(params, "kill_grace_ms", SBX_OPTIONAL, 0, SBX_DRAIN_MS_MAX, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_kill_grace_ms = r == 0;
    p->kill_grace_ms = r == 0 ? (uint32_t)v : 0;
    r = sbx_param_u64(params, "drain_ms", SBX_OPTIONAL, 0, SBX_DRAIN_MS_MAX, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_drain_ms = r == 0;
    p->drain_ms = r == 0 ? (uint32_t)v : 0;
    return read_signal(params, p, err);
}

/* pty: {rows?, cols?, term?}; a bad entry is named "pty.<key>". */
static int read_pty(const msgpack_object *params, struct sbx_spawn_params *p, struct sbx_err *err)
{
    const msgpack_object *t;
    struct sbx_pty_params *q = &p->pty_buf;
    uint64_t v;
    int r;

    r = sbx_param_map(params, "pty", SBX_OPTIONAL, 16, &t, err);
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    p->pty = q;
    if ((r = sbx_param_u64(t, "rows", SBX_OPTIONAL, 1, 65535, &v, err)) < 0) {
        return param_at(err, "must be in 1..65535", "pty.rows");
    }
    q->rows = r == 0 ? (uint32_t)v : 0;
    if ((r = sbx_param_u64(t, "cols", SBX_OPTIONAL, 1, 65535, &v, err)) < 0) {
        return param_at(err, "must be in 1..65535", "pty.cols");
    }
    q->cols = r == 0 ? (uint32_t)v : 0;
    if (param_text(t, "term", 64, &q->term, &q->term_len, err) < 0) {
        return param_at(err, "must be a str of at most 64 bytes", "pty.term");
    }
    for (size_t i = 0; q->term != NULL && i < q->term_len; i++) {
        if ((unsigned char)q->term[i] >= 0x80) {
            return param_at(err, "must be ASCII", "pty.term");
        }
    }
    return 0;
}

int sbx_spawn_params_read(const msgpack_object *params, struct sbx_spawn_params *p,
                          struct sbx_err *err)
{
    bool b = false;

    memset(p, 0, sizeof(*p));
    sbx_err_clear(err);
    if (read_program(params, p, err) < 0 || read_env(params, p, err) < 0 ||
        sbx_param_bool(params, "clear_env", SBX_OPTIONAL, &b, err) < 0 ||
        param_bstr(params, "cwd", SBX_PATH_MAX, &p->cwd, &p->cwd_len, err) < 0 ||
        read_identity(params, p, err) < 0 ||
        read_stdio(params, "stdin", false, &p->stdin_mode, err) < 0 ||
        read_stdio(params, "stdout", false, &p->stdout_mode, err) < 0 ||
        read_stdio(params, "stderr", true, &p->stderr_mode, err) < 0 ||
        read_timing(params, p, err) < 0 || read_pty(params, p, err) < 0 ||
        param_text(params, "tag", SBX_TAG_MAX, &p->tag, &p->tag_len, err) < 0) {
        return -1;
    }
    p->clear_env = b;
    return 0;
}

/* --- one-stream results (§17.4, §17.5, §18) ------------------------------------------------- */

void sbx_stream_result_pack(msgpack_packer *pk, const struct sbx_stream_result *r)
{
    (void)msgpack_pack_map(pk, 1 + 2 * r->has_size);
    sbx_pack_kv_u64(pk, "stream", r->stream);
    if (r->has_size) {
        sbx_pack_kv_u64(pk, "size", r->size);
        sbx_pack_kv_u64(pk, "mode", r->mode);
    }
}

int sbx_stream_result_read(const msgpack_object *o, bool with_size, struct sbx_stream_result *r,
                           struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "stream result: not a map");
    }
    if (need_sid(o, "stream", &r->stream, err) < 0) {
        return bad_message(err, "stream result");
    }
    if (!with_size) {
        return 0;
    }
    if (sbx_param_u64(o, "size", SBX_REQUIRED, 0, UINT64_MAX, &r->size, err) != 0 ||
        sbx_param_u64(o, "mode", SBX_REQUIRED, 0, UINT64_MAX, &r->mode, err) != 0) {
        return bad_message(err, "transfer.download result");
    }
    r->has_size = true;
    return 0;
}

/* --- repl.eval with stream: true (§16.3), pack.create (§19.1) -------------------------------- */

int sbx_eval_streams_read(const msgpack_object *o, struct sbx_eval_streams *r, struct sbx_err *err)
{
    uint64_t v;

    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "repl.eval result: not a map");
    }
    if (sbx_param_u64(o, "eval", SBX_REQUIRED, 0, UINT32_MAX, &v, err) != 0 ||
        need_sid(o, "stdout", &r->out, err) < 0 || need_sid(o, "stderr", &r->err, err) < 0) {
        return bad_message(err, "repl.eval result");
    }
    r->eval = (uint32_t)v;
    return 0;
}

int sbx_pack_result_read(const msgpack_object *o, struct sbx_pack_result *r, struct sbx_err *err)
{
    uint64_t v;

    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "pack.create result: not a map");
    }
    if (sbx_param_u64(o, "id", SBX_REQUIRED, 0, UINT32_MAX, &v, err) != 0 ||
        opt_sid(o, "build_stdout", &r->build_out, err) < 0 ||
        opt_sid(o, "build_stderr", &r->build_err, err) < 0 ||
        need_sid(o, "archive", &r->archive, err) < 0) {
        return bad_message(err, "pack.create result");
    }
    r->id = (uint32_t)v;
    return 0;
}
