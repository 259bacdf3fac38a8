/* The base environment later spawns inherit: get, set, unset, list. */
#include "env.h"

#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "conn.h"
#include "strv.h"

extern char **environ;

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
        const char *kp, *vp;
        size_t nlen, vlen;
        ssize_t i;
        char *kv;

        (void)sbx_obj_bytes(&overlay->via.map.ptr[k].key, &kp, &nlen); /* checked already */
        i = env_find(v, len, kp, nlen);
        if (overlay->via.map.ptr[k].val.type == MSGPACK_OBJECT_NIL) {
            if (i >= 0) { /* nil removes the variable */
                free(v[i]);
                memmove(&v[i], &v[i + 1], (len - (size_t)i) * sizeof(char *));
                len--;
            }
            continue;
        }
        (void)sbx_obj_bytes(&overlay->via.map.ptr[k].val, &vp, &vlen);
        kv = malloc(nlen + vlen + 2);
        if (kv == NULL) {
            goto oom;
        }
        memcpy(kv, kp, nlen);
        kv[nlen] = '=';
        memcpy(kv + nlen + 1, vp, vlen);
        kv[nlen + 1 + vlen] = '\0';
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

/* Total size of the base environment as PROTOCOL.md counts it: len(name)+len(value)+2 each. */
static size_t env_bytes(const struct agent *a)
{
    size_t n = 0;

    for (size_t i = 0; i < a->env_len; i++) {
        n += strlen(a->env[i]) + 1;
    }
    return n;
}

static int env_name_param(const struct sbx_msg *m, char *name, size_t *nlen, struct sbx_err *err)
{
    if (sbx_param_bstr(m->params, "name", SBX_REQUIRED, name, SBX_ENV_NAME_MAX + 1, err) != 0) {
        return -1;
    }
    *nlen = strlen(name);
    if (!agent_env_name_ok(name, *nlen)) {
        return sbx_err_param(err, "name", "names are 1..%u bytes without '=' or NUL",
                             SBX_ENV_NAME_MAX);
    }
    return 0;
}

int agent_env_get(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    char name[SBX_ENV_NAME_MAX + 1];
    size_t nlen;
    ssize_t i;
    msgpack_packer *pk;

    if (env_name_param(m, name, &nlen, err) < 0) {
        return -1;
    }
    i = env_find(a->env, a->env_len, name, nlen);
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "value");
    if (i >= 0) {
        sbx_pack_bstr(pk, a->env[i] + nlen + 1, strlen(a->env[i] + nlen + 1));
    } else {
        msgpack_pack_nil(pk);
    }
    agent_conn_send(c);
    return AGENT_REPLIED;
}

int agent_env_set(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    const msgpack_object *vars = NULL, *value;
    char name[SBX_ENV_NAME_MAX + 1];
    const char *val;
    size_t nlen, vlen, bytes = env_bytes(a), count = a->env_len;
    int r = sbx_param_map(m->params, "vars", SBX_OPTIONAL, SBX_ENV_MAX, &vars, err);

    if (r < 0) {
        return -1;
    }
    if ((r == 0) == (sbx_obj_get(m->params, "name") != NULL)) {
        sbx_err_param(err, "vars", "give either \"vars\" or \"name\" and \"value\"");
        return -1;
    }
    if (r == 1) {
        /* The one-variable form is checked as a one-entry map. */
        if (env_name_param(m, name, &nlen, err) < 0) {
            return -1;
        }
        value = sbx_obj_get(m->params, "value");
        if (value == NULL || !sbx_obj_bytes(value, &val, &vlen) || vlen > SBX_ENV_VAL_MAX ||
            memchr(val, '\0', vlen) != NULL) {
            sbx_err_param(err, "value", "value must be a string of at most %u bytes without NUL",
                          SBX_ENV_VAL_MAX);
            return -1;
        }
        if (env_find(a->env, a->env_len, name, nlen) < 0) {
            count++;
            bytes += nlen + 2;
        }
        bytes += vlen;
    } else {
        /* Check everything first, so a bad entry changes nothing. */
        if (agent_env_check_map(vars, "vars", err) < 0) {
            return -1;
        }
        for (uint32_t k = 0; k < vars->via.map.size; k++) {
            const char *kp;
            size_t kn, vn = 0;
            (void)sbx_obj_bytes(&vars->via.map.ptr[k].key, &kp, &kn);
            if (vars->via.map.ptr[k].val.type != MSGPACK_OBJECT_NIL) {
                (void)sbx_obj_bytes(&vars->via.map.ptr[k].val, &val, &vn);
                count++; /* an over-estimate when replacing: only used for the caps */
                bytes += kn + vn + 2;
            }
        }
    }
    if (count > SBX_ENV_MAX || bytes > SBX_ENV_BYTES_MAX) {
        sbx_err_limit(err, count > SBX_ENV_MAX ? "env_count" : "env_bytes",
                      count > SBX_ENV_MAX ? SBX_ENV_MAX : SBX_ENV_BYTES_MAX,
                      "the base environment would exceed %u variables or %u bytes", SBX_ENV_MAX,
                      SBX_ENV_BYTES_MAX);
        return -1;
    }
    if (r == 1) {
        r = env_put(a, name, nlen, val, vlen);
    } else {
        r = 0;
        for (uint32_t k = 0; k < vars->via.map.size && r == 0; k++) {
            const char *kp, *vp;
            size_t kn, vn;
            (void)sbx_obj_bytes(&vars->via.map.ptr[k].key, &kp, &kn);
            if (vars->via.map.ptr[k].val.type == MSGPACK_OBJECT_NIL) {
                env_del(a, kp, kn);
                continue;
            }
            (void)sbx_obj_bytes(&vars->via.map.ptr[k].val, &vp, &vn);
            r = env_put(a, kp, kn, vp, vn);
        }
    }
    if (r < 0) {
        return sbx_err_oom(err);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_env_unset(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char name[SBX_ENV_NAME_MAX + 1];
    size_t nlen;

    if (env_name_param(m, name, &nlen, err) < 0) {
        return -1;
    }
    env_del(c->a, name, nlen);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_env_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "env");
    msgpack_pack_map(pk, (uint32_t)a->env_len);
    for (size_t i = 0; i < a->env_len; i++) {
        const char *eq = strchr(a->env[i], '=');
        sbx_pack_bstr(pk, a->env[i], (size_t)(eq - a->env[i]));
        sbx_pack_bstr(pk, eq + 1, strlen(eq + 1));
    }
    agent_conn_send(c);
    return AGENT_REPLIED;
}
