/*
 * envGet, envSet, envDelete, envToObject (docs/GATEWAY.md) on the agent's base
 * environment (PROTOCOL.md §13), which every later process inherits, and the sandbox's initial
 * env from the Python SDK's create config.
 */
#include <stdlib.h>
#include <string.h>

#include "m_fs.h"
#include "m_proc.h"

/* Deno's rule for a key: not empty, no '=' and no NUL (Deno.env.set throws otherwise). */
static int key_param(struct gw_call *call, json_t *params, const char **key)
{
    if (gw_param_str(call, params, "key", true, key) < 0) {
        return -1;
    }
    if ((*key)[0] == '\0' || strchr(*key, '=') != NULL || strlen(*key) > SBX_ENV_NAME_MAX) {
        gw_call_fail(call, "TypeError", NULL, "%s: key '%.64s' is not a valid variable name",
                     call->method, *key);
        return -1;
    }
    return 0;
}

/* A msgpack str/bin as a JSON string, invalid UTF-8 replaced (U+FFFD). */
static json_t *bytes_json(const msgpack_object *o)
{
    const char *p;
    size_t n;

    if (o->type == MSGPACK_OBJECT_STR) {
        p = o->via.str.ptr;
        n = o->via.str.size;
    } else if (o->type == MSGPACK_OBJECT_BIN) {
        p = o->via.bin.ptr;
        n = o->via.bin.size;
    } else {
        return NULL;
    }
    return gw_fs_json_lossy(p, n);
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    size_t klen = strlen(key);

    if (m == NULL || m->type != MSGPACK_OBJECT_MAP) {
        return NULL;
    }
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;

        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0) {
            return &m->via.map.ptr[i].val;
        }
    }
    return NULL;
}

static void get_done(struct gw_call *call, const struct sbx_event *ev)
{
    const msgpack_object *v;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "envGet", NULL);
        return;
    }
    v = map_get(ev->result, "value");
    gw_call_ok(call, v != NULL ? bytes_json(v) : NULL);
}

void gw_m_env_get(struct gw_call *call, json_t *params)
{
    struct sbx_err err;
    const char *key;

    if (key_param(call, params, &key) < 0) {
        return;
    }
    if (sbx_env_get(gw_session_conn(call->s), key, gw_call_expect(call, get_done), NULL, &err) <
        0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "envGet", NULL);
        return;
    }
    gw_session_flush(call->s);
}

static void void_done(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, call->method, NULL);
        return;
    }
    gw_call_ok(call, NULL);
}

void gw_m_env_set(struct gw_call *call, json_t *params)
{
    const char *key, *value;
    struct sbx_err err;

    if (key_param(call, params, &key) < 0 ||
        gw_param_str(call, params, "value", true, &value) < 0) {
        return;
    }
    if (sbx_env_set(gw_session_conn(call->s), key, value, gw_call_expect(call, void_done), NULL,
                    &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "envSet", NULL);
        return;
    }
    gw_session_flush(call->s);
}

void gw_m_env_delete(struct gw_call *call, json_t *params)
{
    struct sbx_err err;
    const char *key;

    if (key_param(call, params, &key) < 0) {
        return;
    }
    if (sbx_env_unset(gw_session_conn(call->s), key, gw_call_expect(call, void_done), NULL, &err) <
        0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "envDelete", NULL);
        return;
    }
    gw_session_flush(call->s);
}

static void list_done(struct gw_call *call, const struct sbx_event *ev)
{
    const msgpack_object *env;
    json_t *obj;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "envToObject", NULL);
        return;
    }
    env = map_get(ev->result, "env");
    obj = json_object();
    if (obj == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "envToObject: out of memory");
        return;
    }
    for (uint32_t i = 0; env != NULL && env->type == MSGPACK_OBJECT_MAP && i < env->via.map.size;
         i++) {
        json_t *k = bytes_json(&env->via.map.ptr[i].key);
        json_t *v = bytes_json(&env->via.map.ptr[i].val);

        /* A name holding a NUL names no variable (no bstr holds one, PROTOCOL.md §4.4): dropped,
         * as the key it would make is one JSON parsers without NUL support refuse. */
        if (k != NULL && v != NULL && strlen(json_string_value(k)) == json_string_length(k)) {
            (void)json_object_setn_new(obj, json_string_value(k), json_string_length(k), v);
            v = NULL;
        }
        json_decref(k);
        json_decref(v);
    }
    gw_call_ok(call, obj);
}

void gw_m_env_to_object(struct gw_call *call, json_t *params)
{
    struct sbx_err err;

    (void)params;
    if (sbx_env_list(gw_session_conn(call->s), gw_call_expect(call, list_done), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "envToObject", NULL);
        return;
    }
    gw_session_flush(call->s);
}

void gw_methods_session_ready(struct gw_session *s)
{
    struct gw_sandbox *sb = gw_session_sandbox(s);
    const char **vars;
    const char *k;
    json_t *v;
    size_t n = 0;
    struct sbx_err err;

    gw_fetch_session_ready(s); /* the secrets' placeholders (fetch.c) */
    if (sb->env == NULL || json_object_size(sb->env) == 0) {
        return;
    }
    vars = calloc(json_object_size(sb->env) + 1, sizeof(*vars));
    if (vars == NULL) {
        return;
    }
    json_object_foreach(sb->env, k, v)
    {
        char *e;

        if (json_is_string(v) && asprintf(&e, "%s=%s", k, json_string_value(v)) >= 0) {
            vars[n++] = e;
        }
    }
    /* Applied once, by the first session: the agent keeps it in its base environment. */
    if (n > 0 && sbx_env_set_vars(gw_session_conn(s), vars, n, NULL, NULL, &err) < 0) {
        gw_log("sandbox %s: applying its env: %s", sb->id, err.msg);
    }
    for (size_t i = 0; i < n; i++) {
        free((char *)vars[i]);
    }
    free(vars);
    json_decref(sb->env);
    sb->env = NULL;
}
