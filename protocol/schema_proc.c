/*
 * The wire schema's process records (sbx/schema.h): proc.spawn params (§14.2, §15.1), the
 * subset of them repl.start takes too (§16.2), and proc.attach params and result (§14.9). One pack
 * function for clients and one read function for the agent and anyone who relays a request, so both
 * sides share one definition of a valid spawn request.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sbx/limits.h"
#include "sbx/schema.h"
#include "schema_int.h"

/* --- helpers ------------------------------------------------------------------------------- */

/* BAD_PARAM with a formatted field path ("argv[3]", "groups[1]"). */
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

/* An error of a nested map's entry: its field becomes "<map>.<field>" (§7.5). */
static int nested(struct sbx_err *err, const char *map)
{
    char field[SBX_ERR_FIELD_MAX];

    (void)snprintf(field, sizeof(field), "%s.%s", map, err->field);
    memcpy(err->field, field, sizeof(field));
    return -1;
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
        return sbx_err_param(err, key, "%s must be a string of at most %zu bytes without NUL", key,
                             max);
    }
    return 0;
}

/* An optional str param without NUL: 0 found, 1 absent, -1 BAD_PARAM. */
static int param_text(const msgpack_object *params, const char *key, size_t max, const char **p,
                      size_t *n, struct sbx_err *err)
{
    int r = sbx_param_str(params, key, SBX_OPTIONAL, max, p, n, err);

    if (r == 0 && memchr(*p, '\0', *n) != NULL) {
        return sbx_err_param(err, key, "parameter \"%s\" contains a NUL byte", key);
    }
    return r;
}

/* --- pack ---------------------------------------------------------------------------------- */

static const char *const stdio_names[] = { NULL, "pipe", "null", "stdout" };

static uint32_t count_strv(const char *const *v)
{
    uint32_t n = 0;

    while (v != NULL && v[n] != NULL) {
        n++;
    }
    return n;
}

static bool stdio_set(enum sbx_stdio m)
{
    return m > SBX_STDIO_DEFAULT && m <= SBX_STDIO_STDOUT;
}

static void pack_stdio(msgpack_packer *pk, const char *key, enum sbx_stdio m)
{
    if (stdio_set(m)) {
        sbx_pack_kv_str(pk, key, stdio_names[m]);
    }
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
                 p->has_drain_ms + (p->pty != NULL) + (p->tag != NULL) + (p->memory_max != 0) +
                 (p->pids_max != 0) + (p->cpu_max != 0);

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
    if (p->memory_max != 0) {
        sbx_pack_kv_u64(pk, "memory_max", p->memory_max);
    }
    if (p->pids_max != 0) {
        sbx_pack_kv_u64(pk, "pids_max", p->pids_max);
    }
    if (p->cpu_max != 0) {
        sbx_pack_kv_u64(pk, "cpu_max", p->cpu_max);
    }
}

/* --- read ---------------------------------------------------------------------------------- */

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
            return param_at(err, "must be a string of at most 131072 bytes without NUL", "argv[%u]",
                            i);
        }
    }
    return 0;
}

/* env: {bstr: bstr|nil}, names 1..256 bytes without '=', values up to 128 KiB (§13). The field
 * is "env"; the message names the entry (§7.5). */
static int read_env(const msgpack_object *params, struct sbx_spawn_params *p, struct sbx_err *err)
{
    const char *s, *name;
    size_t n, nlen;

    if (sbx_param_map(params, "env", SBX_OPTIONAL, SBX_ENV_MAX, &p->envv, err) < 0) {
        return -1;
    }
    for (uint32_t i = 0; p->envv != NULL && i < p->envv->via.map.size; i++) {
        const msgpack_object_kv *kv = &p->envv->via.map.ptr[i];
        if (!bstr_ok(&kv->key, SBX_ENV_NAME_MAX, &name, &nlen) || nlen == 0 ||
            memchr(name, '=', nlen) != NULL) {
            return sbx_err_param(err, "env",
                                 "env entry %u: a name is 1..%u bytes without '=' or NUL", i,
                                 SBX_ENV_NAME_MAX);
        }
        if (kv->val.type != MSGPACK_OBJECT_NIL && !bstr_ok(&kv->val, SBX_ENV_VAL_MAX, &s, &n)) {
            return sbx_err_param(err, "env",
                                 "env \"%.*s\": a value is nil or a string of at most %u bytes "
                                 "without NUL",
                                 (int)nlen, name, SBX_ENV_VAL_MAX);
        }
    }
    return 0;
}

/* user, uid, gid, groups. */
static int read_ids(const msgpack_object *params, struct sbx_spawn_params *p, struct sbx_err *err)
{
    uint64_t v = 0;
    int r;

    if (param_text(params, "user", SBX_USER_MAX, &p->user, &p->user_len, err) < 0) {
        return -1;
    }
    r = sbx_param_u64(params, "uid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_uid = r == 0;
    p->uid = r == 0 ? (uint32_t)v : 0;
    if (p->has_uid && p->user != NULL) {
        return sbx_err_param(err, "uid", "give \"user\" or \"uid\", not both");
    }
    r = sbx_param_u64(params, "gid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &v, err);
    if (r < 0) {
        return -1;
    }
    p->has_gid = r == 0;
    p->gid = r == 0 ? (uint32_t)v : 0;
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

/* memory_max, pids_max, cpu_max (§14.10). Whether the guest can apply them is the agent's
 * question (UNSUPPORTED without capability "limits"). */
static int read_limits(const msgpack_object *params, struct sbx_spawn_params *p,
                       struct sbx_err *err)
{
    uint64_t v = 0, max = INT64_MAX;

    if (sbx_param_u64(params, "memory_max", SBX_OPTIONAL, SBX_MEMORY_MAX_MIN, max, &v, err) < 0) {
        return -1;
    }
    p->memory_max = v;
    v = 0;
    if (sbx_param_u64(params, "pids_max", SBX_OPTIONAL, 1, SBX_PIDS_MAX_MAX, &v, err) < 0) {
        return -1;
    }
    p->pids_max = (uint32_t)v;
    v = 0;
    if (sbx_param_u64(params, "cpu_max", SBX_OPTIONAL, 1, SBX_CPU_MAX_MAX, &v, err) < 0) {
        return -1;
    }
    p->cpu_max = (uint32_t)v;
    return 0;
}

/* env, clear_env, cwd, user, uid, gid, groups and the limits: what repl.start shares. */
static int read_identity(const msgpack_object *params, struct sbx_spawn_params *p,
                         struct sbx_err *err)
{
    bool b = false;

    if (read_env(params, p, err) < 0 ||
        sbx_param_bool(params, "clear_env", SBX_OPTIONAL, &b, err) < 0 ||
        param_bstr(params, "cwd", SBX_PATH_MAX, &p->cwd, &p->cwd_len, err) < 0 ||
        read_ids(params, p, err) < 0 || read_limits(params, p, err) < 0) {
        return -1;
    }
    p->clear_env = b;
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
    return sbx_err_param(err, key, "%s must be %s", key,
                         merge ? "\"pipe\", \"null\" or \"stdout\"" : "\"pipe\" or \"null\"");
}

/* kill_signal: a name (Appendix A: "TERM", "SIGTERM", "15") or a number 1..64. */
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
    if (sbx_obj_cstr(o, name, sizeof(name)) == 0 && (p->kill_signal = sbx_signal_parse(name)) > 0) {
        return 0;
    }
    p->kill_signal = 0;
    return sbx_err_param(err, "kill_signal",
                         "kill_signal must be a signal name such as \"TERM\" or a number 1..64");
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
        return nested(err, "pty");
    }
    q->rows = r == 0 ? (uint32_t)v : 0;
    if ((r = sbx_param_u64(t, "cols", SBX_OPTIONAL, 1, 65535, &v, err)) < 0) {
        return nested(err, "pty");
    }
    q->cols = r == 0 ? (uint32_t)v : 0;
    if (param_text(t, "term", SBX_PTY_TERM_MAX, &q->term, &q->term_len, err) < 0) {
        return nested(err, "pty");
    }
    for (size_t i = 0; q->term != NULL && i < q->term_len; i++) {
        if ((unsigned char)q->term[i] >= 0x80) {
            return sbx_err_param(err, "pty.term", "pty.term must be ASCII");
        }
    }
    return 0;
}

int sbx_spawn_params_read(const msgpack_object *params, struct sbx_spawn_params *p,
                          struct sbx_err *err)
{
    memset(p, 0, sizeof(*p));
    sbx_err_clear(err);
    if (read_program(params, p, err) < 0 || read_identity(params, p, err) < 0 ||
        read_stdio(params, "stdin", false, &p->stdin_mode, err) < 0 ||
        read_stdio(params, "stdout", false, &p->stdout_mode, err) < 0 ||
        read_stdio(params, "stderr", true, &p->stderr_mode, err) < 0 ||
        read_timing(params, p, err) < 0 || read_pty(params, p, err) < 0 ||
        param_text(params, "tag", SBX_TAG_MAX, &p->tag, &p->tag_len, err) < 0) {
        return -1;
    }
    return 0;
}

int sbx_spawn_identity_read(const msgpack_object *params, struct sbx_spawn_params *p,
                            struct sbx_err *err)
{
    memset(p, 0, sizeof(*p));
    sbx_err_clear(err);
    return read_identity(params, p, err);
}

/* --- proc.attach (§14.9) ------------------------------------------------------------------- */

void sbx_attach_params_pack(msgpack_packer *pk, const struct sbx_attach_params *p)
{
    (void)msgpack_pack_map(pk, 1 + p->has_from + p->has_stderr_from + !p->stdin + p->steal);
    sbx_pack_kv_u64(pk, "id", p->id);
    if (p->has_from) {
        sbx_pack_kv_u64(pk, "from", p->from);
    }
    if (p->has_stderr_from) {
        sbx_pack_kv_u64(pk, "stderr_from", p->stderr_from);
    }
    if (!p->stdin) {
        sbx_pack_kv_bool(pk, "stdin", false);
    }
    if (p->steal) {
        sbx_pack_kv_bool(pk, "steal", true);
    }
}

int sbx_attach_params_read(const msgpack_object *params, struct sbx_attach_params *p,
                           struct sbx_err *err)
{
    uint64_t v = 0;
    int r;

    memset(p, 0, sizeof(*p));
    sbx_err_clear(err);
    p->stdin = true;
    if (sbx_param_u64(params, "id", SBX_REQUIRED, 0, UINT32_MAX, &v, err) != 0) {
        return -1;
    }
    p->id = (uint32_t)v;
    if ((r = sbx_param_u64(params, "from", SBX_OPTIONAL, 0, UINT64_MAX, &p->from, err)) < 0) {
        return -1;
    }
    p->has_from = r == 0;
    r = sbx_param_u64(params, "stderr_from", SBX_OPTIONAL, 0, UINT64_MAX, &p->stderr_from, err);
    if (r < 0) {
        return -1;
    }
    p->has_stderr_from = r == 0;
    if (sbx_param_bool(params, "stdin", SBX_OPTIONAL, &p->stdin, err) < 0 ||
        sbx_param_bool(params, "steal", SBX_OPTIONAL, &p->steal, err) < 0) {
        return -1;
    }
    return 0;
}

static void pack_uint_or_nil(msgpack_packer *pk, const char *k, bool has, uint64_t v)
{
    if (has) {
        sbx_pack_kv_u64(pk, k, v);
    } else {
        sbx_pack_kv_nil(pk, k);
    }
}

void sbx_attach_result_pack(msgpack_packer *pk, const struct sbx_attach_result *r)
{
    (void)msgpack_pack_map(pk, 7);
    sbx__pack_sid_or_nil(pk, "stdin", r->stdin_sid);
    sbx__pack_sid_or_nil(pk, "stdout", r->stdout_sid);
    sbx__pack_sid_or_nil(pk, "stderr", r->stderr_sid);
    pack_uint_or_nil(pk, "stdout_start", r->has_stdout_start, r->stdout_start);
    pack_uint_or_nil(pk, "stderr_start", r->has_stderr_start, r->stderr_start);
    sbx_pack_kv_u64(pk, "stdout_dropped", r->stdout_dropped);
    sbx_pack_kv_u64(pk, "stderr_dropped", r->stderr_dropped);
}

/* A present uint|nil field: 0 with *@has set, or -1. */
static int read_uint_or_nil(const msgpack_object *o, const char *key, bool *has, uint64_t *v,
                            struct sbx_err *err)
{
    const msgpack_object *x;
    int r = sbx__nil_or(o, key, &x, err);

    *has = false;
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    if (sbx__need_u64(o, key, 0, UINT64_MAX, v, err) < 0) {
        return -1;
    }
    *has = true;
    return 0;
}

int sbx_attach_result_read(const msgpack_object *o, struct sbx_attach_result *r,
                           struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "proc.attach result: not a map");
    }
    if (sbx__read_sid_or_nil(o, "stdin", &r->stdin_sid, err) < 0 ||
        sbx__read_sid_or_nil(o, "stdout", &r->stdout_sid, err) < 0 ||
        sbx__read_sid_or_nil(o, "stderr", &r->stderr_sid, err) < 0 ||
        read_uint_or_nil(o, "stdout_start", &r->has_stdout_start, &r->stdout_start, err) < 0 ||
        read_uint_or_nil(o, "stderr_start", &r->has_stderr_start, &r->stderr_start, err) < 0 ||
        sbx_param_u64(o, "stdout_dropped", SBX_OPTIONAL, 0, UINT64_MAX, &r->stdout_dropped, err) <
            0 ||
        sbx_param_u64(o, "stderr_dropped", SBX_OPTIONAL, 0, UINT64_MAX, &r->stderr_dropped, err) <
            0 ||
        sbx__distinct_sids((const uint32_t[]){ r->stdin_sid, r->stdout_sid, r->stderr_sid },
                           (const char *const[]){ "stdin", "stdout", "stderr" }, 3, err) < 0) {
        return sbx__bad_message(err, "proc.attach result");
    }
    if (r->stdout_sid != 0 && !r->has_stdout_start) {
        (void)sbx_err_param(err, "stdout_start", "stdout_start is nil with a stdout stream");
        return sbx__bad_message(err, "proc.attach result");
    }
    if (r->stderr_sid != 0 && !r->has_stderr_start) {
        (void)sbx_err_param(err, "stderr_start", "stderr_start is nil with a stderr stream");
        return sbx__bad_message(err, "proc.attach result");
    }
    return 0;
}
