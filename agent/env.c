/* The base environment later spawns inherit: get, set, unset, list. */
#include <stdlib.h>
#include <string.h>

#include "agent.h"

extern char **environ;

bool agent_env_name_ok(const char *s, size_t n)
{
    return n > 0 && n <= SBX_ENV_NAME_MAX && memchr(s, '=', n) == NULL &&
           memchr(s, '\0', n) == NULL;
}

void agent_strv_free(char **v)
{
    if (v == NULL) {
        return;
    }
    for (char **p = v; *p != NULL; p++) {
        free(*p);
    }
    free(v);
}

/* Index of NAME in a "K=V" vector, or -1. */
static ssize_t env_find(char *const *env, size_t len, const char *name, size_t nlen)
{
    for (size_t i = 0; i < len; i++) {
        if (strncmp(env[i], name, nlen) == 0 && env[i][nlen] == '=') {
            return (ssize_t)i;
        }
    }
    return -1;
}

const char *agent_env_lookup(char *const *envp, const char *name)
{
    size_t n = strlen(name);

    for (; *envp != NULL; envp++) {
        if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=') {
            return *envp + n + 1;
        }
    }
    return NULL;
}

static int env_put(struct agent *a, const char *name, size_t nlen, const char *val, size_t vlen)
{
    char *kv = malloc(nlen + vlen + 2);
    ssize_t i;

    if (kv == NULL) {
        return -1;
    }
    memcpy(kv, name, nlen);
    kv[nlen] = '=';
    memcpy(kv + nlen + 1, val, vlen);
    kv[nlen + 1 + vlen] = '\0';
    i = env_find(a->env, a->env_len, name, nlen);
    if (i >= 0) {
        free(a->env[i]);
        a->env[i] = kv;
        return 0;
    }
    if (a->env_len + 2 > a->env_cap) {
        size_t cap = a->env_cap ? a->env_cap * 2 : 32;
        char **v = realloc(a->env, cap * sizeof(char *));
        if (v == NULL) {
            free(kv);
            return -1;
        }
        a->env = v;
        a->env_cap = cap;
    }
    a->env[a->env_len++] = kv;
    a->env[a->env_len] = NULL;
    return 0;
}

static void env_del(struct agent *a, const char *name, size_t nlen)
{
    ssize_t i = env_find(a->env, a->env_len, name, nlen);

    if (i < 0) {
        return;
    }
    free(a->env[i]);
    memmove(&a->env[i], &a->env[i + 1], (a->env_len - (size_t)i) * sizeof(char *));
    a->env_len--;
}

int agent_env_init(struct agent *a)
{
    a->env = calloc(32, sizeof(char *));
    if (a->env == NULL) {
        return -1;
    }
    a->env_cap = 32;
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        /* The control channel fd is the agent's own business, not the workload's. */
        if (eq == NULL || strncmp(*e, "SBX_INIT_FD=", 12) == 0) {
            continue;
        }
        if (env_put(a, *e, (size_t)(eq - *e), eq + 1, strlen(eq + 1)) < 0) {
            return -1;
        }
    }
    return 0;
}

void agent_env_free(struct agent *a)
{
    agent_strv_free(a->env);
    a->env = NULL;
    a->env_len = a->env_cap = 0;
}

char **agent_env_build(struct agent *a, bool clear, const msgpack_object *overlay,
                       char *const *extra)
{
    size_t cap = (clear ? 0 : a->env_len) + (overlay ? overlay->via.map.size : 0) + 8, len = 0;
    char **v = calloc(cap + 1, sizeof(char *));

    if (v == NULL) {
        return NULL;
    }
    if (!clear) {
        for (size_t i = 0; i < a->env_len; i++) {
            if ((v[len++] = strdup(a->env[i])) == NULL) {
                goto oom;
            }
        }
    }
    /* extra (user defaults) first, then the request's own env wins over everything. */
    for (size_t k = 0; extra != NULL && extra[k] != NULL; k++) {
        size_t nlen = (size_t)(strchr(extra[k], '=') - extra[k]);
        ssize_t i = env_find(v, len, extra[k], nlen);
        char *kv = strdup(extra[k]);
        if (kv == NULL) {
            goto oom;
        }
        if (i >= 0) {
            free(v[i]);
            v[i] = kv;
        } else {
            v[len++] = kv;
        }
    }
    for (uint32_t k = 0; overlay != NULL && k < overlay->via.map.size; k++) {
        const msgpack_object *key = &overlay->via.map.ptr[k].key;
        const msgpack_object *val = &overlay->via.map.ptr[k].val;
        size_t nlen = key->via.str.size, vlen = val->via.str.size;
        char *kv = malloc(nlen + vlen + 2);
        ssize_t i;
        if (kv == NULL) {
            goto oom;
        }
        memcpy(kv, key->via.str.ptr, nlen);
        kv[nlen] = '=';
        memcpy(kv + nlen + 1, val->via.str.ptr, vlen);
        kv[nlen + 1 + vlen] = '\0';
        i = env_find(v, len, kv, nlen);
        if (i >= 0) {
            free(v[i]);
            v[i] = kv;
        } else {
            v[len++] = kv;
        }
    }
    v[len] = NULL;
    return v;
oom:
    agent_strv_free(v);
    return NULL;
}

static int env_name_param(const struct sbx_msg *m, const char **name, size_t *nlen,
                          struct sbx_err *err)
{
    if (sbx_param_str(m->params, "name", SBX_REQUIRED, SBX_ENV_NAME_MAX, name, nlen, err) != 0) {
        return -1;
    }
    if (!agent_env_name_ok(*name, *nlen)) {
        return sbx_err_param(err, "name", "names are 1..%u bytes without '=' or NUL",
                             SBX_ENV_NAME_MAX);
    }
    return 0;
}

void agent_env_get(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent *a = c->a;
    struct sbx_err err;
    const char *name;
    size_t nlen;
    ssize_t i;
    msgpack_packer *pk;

    if (env_name_param(m, &name, &nlen, &err) < 0) {
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    i = env_find(a->env, a->env_len, name, nlen);
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_kv_str(pk, "value", i >= 0 ? a->env[i] + nlen + 1 : NULL);
    agent_conn_send(c);
}

void agent_env_set(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent *a = c->a;
    struct sbx_err err;
    const msgpack_object *vars = NULL;
    const char *name, *val;
    size_t nlen, vlen;
    int r = sbx_param_map(m->params, "vars", SBX_OPTIONAL, SBX_ENV_MAX, &vars, &err);

    if (r < 0) {
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    if (r == 0) {
        /* Check everything first, so a bad entry changes nothing. */
        for (uint32_t k = 0; k < vars->via.map.size; k++) {
            const msgpack_object *key = &vars->via.map.ptr[k].key;
            const msgpack_object *v = &vars->via.map.ptr[k].val;
            if (key->type != MSGPACK_OBJECT_STR ||
                !agent_env_name_ok(key->via.str.ptr, key->via.str.size) ||
                v->type != MSGPACK_OBJECT_STR || v->via.str.size > SBX_ENV_VAL_MAX ||
                memchr(v->via.str.ptr, '\0', v->via.str.size) != NULL) {
                sbx_err_param(&err, "vars", "vars must map names (no '=', NUL) to strings");
                agent_conn_reply_error(c, m->id, &err);
                return;
            }
        }
        if (a->env_len + vars->via.map.size > SBX_ENV_MAX) {
            sbx_err_set(&err, SBX_E_LIMIT, "more than %u environment variables", SBX_ENV_MAX);
            agent_conn_reply_error(c, m->id, &err);
            return;
        }
        for (uint32_t k = 0; k < vars->via.map.size; k++) {
            const msgpack_object *key = &vars->via.map.ptr[k].key;
            const msgpack_object *v = &vars->via.map.ptr[k].val;
            if (env_put(a, key->via.str.ptr, key->via.str.size, v->via.str.ptr, v->via.str.size) <
                0) {
                sbx_err_set(&err, SBX_E_INTERNAL, "out of memory");
                agent_conn_reply_error(c, m->id, &err);
                return;
            }
        }
        agent_conn_reply_empty(c, m->id);
        return;
    }
    if (env_name_param(m, &name, &nlen, &err) < 0 ||
        sbx_param_str(m->params, "value", SBX_REQUIRED, SBX_ENV_VAL_MAX, &val, &vlen, &err) != 0) {
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    if (memchr(val, '\0', vlen) != NULL) {
        sbx_err_param(&err, "value", "value contains a NUL byte");
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    if (env_find(a->env, a->env_len, name, nlen) < 0 && a->env_len >= SBX_ENV_MAX) {
        sbx_err_set(&err, SBX_E_LIMIT, "more than %u environment variables", SBX_ENV_MAX);
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    if (env_put(a, name, nlen, val, vlen) < 0) {
        sbx_err_set(&err, SBX_E_INTERNAL, "out of memory");
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    agent_conn_reply_empty(c, m->id);
}

void agent_env_unset(struct agent_conn *c, const struct sbx_msg *m)
{
    struct sbx_err err;
    const char *name;
    size_t nlen;

    if (env_name_param(m, &name, &nlen, &err) < 0) {
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    env_del(c->a, name, nlen);
    agent_conn_reply_empty(c, m->id);
}

void agent_env_list(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent *a = c->a;
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "env");
    msgpack_pack_map(pk, (uint32_t)a->env_len);
    for (size_t i = 0; i < a->env_len; i++) {
        const char *eq = strchr(a->env[i], '=');
        sbx_pack_strn(pk, a->env[i], (size_t)(eq - a->env[i]));
        sbx_pack_cstr(pk, eq + 1);
    }
    agent_conn_send(c);
}
