/* sbx env: the agent's base environment (what later spawns inherit). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int cmp_key(const void *a, const void *b)
{
    const msgpack_object_kv *x = *(const msgpack_object_kv *const *)a;
    const msgpack_object_kv *y = *(const msgpack_object_kv *const *)b;
    uint32_t n =
        x->key.via.str.size < y->key.via.str.size ? x->key.via.str.size : y->key.via.str.size;
    int r = memcmp(x->key.via.str.ptr, y->key.via.str.ptr, n);

    if (r != 0) {
        return r;
    }
    return x->key.via.str.size < y->key.via.str.size   ? -1
           : x->key.via.str.size > y->key.via.str.size ? 1
                                                       : 0;
}

static int env_list(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *env = NULL;
    const msgpack_object_kv **kv;
    uint32_t n = 0;

    if (sbx_param_map(res, "env", SBX_REQUIRED, UINT32_MAX, &env, err) < 0) {
        return -1;
    }
    if (cli->json) {
        cli_json_println(env);
        return 0;
    }
    kv = calloc(env->via.map.size + 1, sizeof(*kv));
    if (kv == NULL) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    for (uint32_t i = 0; i < env->via.map.size; i++) {
        if (env->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR) {
            kv[n++] = &env->via.map.ptr[i];
        }
    }
    qsort(kv, n, sizeof(*kv), cmp_key);
    for (uint32_t i = 0; i < n; i++) {
        cli_put_text(stdout, kv[i]->key.via.str.ptr, kv[i]->key.via.str.size);
        (void)putchar('=');
        cli_print_human(stdout, &kv[i]->val);
        (void)putchar('\n');
    }
    free(kv);
    return 0;
}

/* `env get`: the value; exit 1 when unset, like printenv. */
static int env_value(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *v = sbx_obj_get(res, "value");

    if (cli->json) {
        cli_json_println(res);
    }
    if (v == NULL || v->type != MSGPACK_OBJECT_STR) {
        return 1;
    }
    if (!cli->json) {
        (void)fwrite(v->via.str.ptr, 1, v->via.str.size, stdout);
        (void)putchar('\n');
    }
    return 0;
}

int cli_parse_env(struct cli *cli, int opt, const char *arg)
{
    const char *sub = cli->argc > 0 ? cli->argv[0] : "";
    int n = cli->argc - 1;

    if (!((strcmp(sub, "list") == 0 && n == 0) || (strcmp(sub, "get") == 0 && n == 1) ||
          (strcmp(sub, "set") == 0 && n >= 1) || (strcmp(sub, "unset") == 0 && n >= 1))) {
        return CLI_OPTS_BAD;
    }
    for (int i = 1; strcmp(sub, "set") == 0 && i <= n; i++) {
        char *eq = strchr(cli->argv[i], '=');
        if (eq == NULL || eq == cli->argv[i]) {
            (void)fprintf(stderr, "sbx: env set: \"%s\" is not NAME=VALUE\n", cli->argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    return 0;
}

int cli_cmd_env(struct cli *cli, struct sbx_client *c)
{
    struct sbx_conn *conn = sbx_client_conn(c);
    const char *sub = cli->argv[0];
    struct sbx_msg resp;
    struct sbx_err err;
    char what[16];
    uint32_t id;
    int r = 0;

    (void)snprintf(what, sizeof(what), "env %s", sub);
    if (strcmp(sub, "list") == 0 || strcmp(sub, "get") == 0) {
        bool list = sub[0] == 'l';
        r = list ? sbx_env_list(conn, NULL, &id, &err)
                 : sbx_env_get(conn, cli->argv[1], NULL, &id, &err);
        if (cli_call(c, r, &id, &resp, &err) < 0 ||
            (r = (list ? env_list : env_value)(cli, resp.result, &err)) < 0) {
            cli_print_err(what, &err);
            return CLI_EXIT_FAIL;
        }
        return r;
    }
    /* set: every variable in one request, applied together or not at all; unset: one each */
    for (int i = 1; i < cli->argc; i = sub[0] == 's' ? cli->argc : i + 1) {
        r = sub[0] == 's' ? sbx_env_set_vars(conn, (const char *const *)cli->argv + 1,
                                             (size_t)cli->argc - 1, NULL, &id, &err)
                          : sbx_env_unset(conn, cli->argv[i], NULL, &id, &err);
        if (cli_call(c, r, &id, &resp, &err) < 0) {
            cli_print_err(what, &err);
            return CLI_EXIT_FAIL;
        }
    }
    return 0;
}
