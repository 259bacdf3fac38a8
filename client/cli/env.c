/* sbx env: the agent's base environment (what later spawns inherit). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char env_usage[] =
    "Usage: sbx env list [--json]\n"
    "       sbx env get NAME          print the value; exit 1 when unset\n"
    "       sbx env set NAME=VALUE... set one or more variables\n"
    "       sbx env unset NAME...     remove variables\n"
    "\n"
    "The agent's base environment is what processes spawned later inherit.\n";

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

static int env_list(const struct cli *cli, struct sbx_client *c)
{
    const msgpack_object *env = NULL;
    const msgpack_object_kv **kv;
    struct sbx_msg resp;
    struct sbx_err err;
    uint32_t n = 0;

    if (sbx_client_call0(c, SBX_M_ENV_LIST, &resp, &err) < 0 ||
        sbx_param_map(resp.result, "env", SBX_REQUIRED, UINT32_MAX, &env, &err) < 0) {
        cli_print_err("env list", &err);
        return CLI_EXIT_FAIL;
    }
    if (cli->json) {
        (void)cli_json_write(stdout, env);
        (void)putchar('\n');
        return 0;
    }
    kv = calloc(env->via.map.size + 1, sizeof(*kv));
    if (kv == NULL) {
        return CLI_EXIT_FAIL;
    }
    for (uint32_t i = 0; i < env->via.map.size; i++) {
        if (env->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR) {
            kv[n++] = &env->via.map.ptr[i];
        }
    }
    qsort(kv, n, sizeof(*kv), cmp_key);
    for (uint32_t i = 0; i < n; i++) {
        (void)fwrite(kv[i]->key.via.str.ptr, 1, kv[i]->key.via.str.size, stdout);
        (void)putchar('=');
        cli_print_human(stdout, &kv[i]->val);
        (void)putchar('\n');
    }
    free(kv);
    return 0;
}

/* Send @method {name}; prints "sbx: @cmd: ..." on failure. 0 or -1. */
static int env_name_call(struct sbx_client *c, const char *method, const char *name,
                         const char *cmd, struct sbx_msg *resp)
{
    struct sbx_err err;
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(c, method, &id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_str(pk, "name", name);
    if (cli_rpc(c, id, resp, &err) < 0) {
        cli_print_err(cmd, &err);
        return -1;
    }
    return 0;
}

static int env_get(const struct cli *cli, struct sbx_client *c, const char *name)
{
    const msgpack_object *v;
    struct sbx_msg resp;

    if (env_name_call(c, SBX_M_ENV_GET, name, "env get", &resp) < 0) {
        return CLI_EXIT_FAIL;
    }
    if (cli->json) {
        (void)cli_json_write(stdout, resp.result);
        (void)putchar('\n');
    }
    v = sbx_obj_get(resp.result, "value");
    if (v == NULL || v->type != MSGPACK_OBJECT_STR) {
        return CLI_EXIT_FAIL; /* unset, like printenv */
    }
    if (!cli->json) {
        (void)fwrite(v->via.str.ptr, 1, v->via.str.size, stdout);
        (void)putchar('\n');
    }
    return 0;
}

static int env_set(struct sbx_client *c, int n, char **vars)
{
    struct sbx_msg resp;
    struct sbx_err err;
    msgpack_packer *pk;
    uint32_t id;

    for (int i = 0; i < n; i++) {
        const char *eq = strchr(vars[i], '=');
        if (eq == NULL || eq == vars[i]) {
            (void)fprintf(stderr, "sbx: env set: \"%s\" is not NAME=VALUE\n", vars[i]);
            return CLI_EXIT_USAGE;
        }
    }
    pk = sbx_client_begin(c, SBX_M_ENV_SET, &id);
    if (n == 1) {
        const char *eq = strchr(vars[0], '=');
        (void)msgpack_pack_map(pk, 2);
        sbx_pack_cstr(pk, "name");
        sbx_pack_bstr(pk, vars[0], (size_t)(eq - vars[0]));
        sbx_pack_kv_str(pk, "value", eq + 1);
    } else {
        (void)msgpack_pack_map(pk, 1);
        sbx_pack_cstr(pk, "vars");
        (void)msgpack_pack_map(pk, (size_t)n);
        for (int i = 0; i < n; i++) {
            const char *eq = strchr(vars[i], '=');
            sbx_pack_bstr(pk, vars[i], (size_t)(eq - vars[i]));
            sbx_pack_cstr(pk, eq + 1);
        }
    }
    if (cli_rpc(c, id, &resp, &err) < 0) {
        cli_print_err("env set", &err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

static int env_unset(struct sbx_client *c, int n, char **names)
{
    for (int i = 0; i < n; i++) {
        struct sbx_msg resp;

        if (env_name_call(c, SBX_M_ENV_UNSET, names[i], "env unset", &resp) < 0) {
            return CLI_EXIT_FAIL;
        }
    }
    return 0;
}

int cli_cmd_env(struct cli *cli, int argc, char **argv)
{
    struct sbx_client *c;
    const char *sub;
    int r = cli_parse_simple(cli, argc, argv, env_usage), status, nargs;
    char **args;

    if (r < 1) {
        return cli_opts_status(r);
    }
    if (r >= argc) {
        (void)fputs(env_usage, stderr);
        return CLI_EXIT_USAGE;
    }
    sub = argv[r];
    args = argv + r + 1;
    nargs = argc - r - 1;
    /* Options may also follow the subcommand: "sbx env list --json". */
    for (int i = 0; i < nargs; i++) {
        if (strcmp(args[i], "--json") == 0) {
            cli->json = true;
            memmove(&args[i], &args[i + 1], (size_t)(nargs - i - 1) * sizeof(*args));
            nargs--;
            i--;
        } else if (strcmp(args[i], "--help") == 0 || strcmp(args[i], "-h") == 0) {
            (void)fputs(env_usage, stdout);
            return 0;
        }
    }
    if (!((strcmp(sub, "list") == 0 && nargs == 0) || (strcmp(sub, "get") == 0 && nargs == 1) ||
          (strcmp(sub, "set") == 0 && nargs >= 1) || (strcmp(sub, "unset") == 0 && nargs >= 1))) {
        (void)fputs(env_usage, stderr);
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        return CLI_EXIT_FAIL;
    }
    if (strcmp(sub, "list") == 0) {
        status = env_list(cli, c);
    } else if (strcmp(sub, "get") == 0) {
        status = env_get(cli, c, args[0]);
    } else if (strcmp(sub, "set") == 0) {
        status = env_set(c, nargs, args);
    } else {
        status = env_unset(c, nargs, args);
    }
    sbx_client_close(c);
    return status;
}
