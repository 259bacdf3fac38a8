/* Process commands: ps, kill, wait. */
#include <signal.h>
#include <string.h>

#include "cli.h"

/* "0", "SIGKILL" or "-" for an exit map (or its absence). */
static void format_exit(char *buf, size_t bufsz, const msgpack_object *ex)
{
    struct sbx_exit x;
    struct sbx_err e;
    char sig[32];
    const char *name;

    if (ex == NULL || sbx_exit_read(ex, &x, &e) < 0) {
        (void)snprintf(buf, bufsz, "-");
    } else if (x.exited) {
        (void)snprintf(buf, bufsz, "%d", x.code);
    } else {
        name = sbx_signal_name(x.signo, sig, sizeof(sig));
        (void)snprintf(buf, bufsz, "%s", name != NULL ? name : "-");
    }
}

static void print_num(const msgpack_object *o, int width)
{
    if (o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        (void)printf("%-*llu ", width, (unsigned long long)o->via.u64);
    } else {
        (void)printf("%-*s ", width, "-");
    }
}

/* True when some entry of @procs has @key (fields newer agents add: a column only then). */
static bool any_has(const msgpack_object *procs, const char *key)
{
    for (uint32_t i = 0; i < procs->via.array.size; i++) {
        if (sbx_obj_get(&procs->via.array.ptr[i], key) != NULL) {
            return true;
        }
    }
    return false;
}

/* "yes", "no" or "-" for a bool field. */
static const char *yes_no(const msgpack_object *o)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_BOOLEAN) {
        return "-";
    }
    return o->via.boolean ? "yes" : "no";
}

/* "OUT/ERR" dropped bytes, "-" for one not reported. */
static void format_dropped(char *buf, size_t bufsz, const msgpack_object *p)
{
    const msgpack_object *v[2] = { sbx_obj_get(p, "stdout_dropped"),
                                   sbx_obj_get(p, "stderr_dropped") };
    char part[2][24];

    for (int i = 0; i < 2; i++) {
        if (v[i] != NULL && v[i]->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            (void)snprintf(part[i], sizeof(part[i]), "%llu", (unsigned long long)v[i]->via.u64);
        } else {
            (void)snprintf(part[i], sizeof(part[i]), "-");
        }
    }
    (void)snprintf(buf, bufsz, "%s/%s", part[0], part[1]);
}

int cli_print_procs(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *procs = NULL;
    bool attached, dropped;

    if (sbx_param_array(res, "procs", SBX_REQUIRED, UINT32_MAX, &procs, err) < 0) {
        return -1;
    }
    if (cli->json) {
        cli_json_println(res);
        return 0;
    }
    attached = any_has(procs, "attached");
    dropped = any_has(procs, "stdout_dropped") || any_has(procs, "stderr_dropped");
    (void)printf("%-6s %-8s %-8s %-8s ", "ID", "PID", "STATE", "EXIT");
    if (attached) {
        (void)printf("%-8s ", "ATTACHED");
    }
    if (dropped) {
        (void)printf("%-12s ", "DROPPED");
    }
    (void)printf("%s\n", "CMD");
    for (uint32_t i = 0; i < procs->via.array.size; i++) {
        const msgpack_object *p = &procs->via.array.ptr[i];
        const msgpack_object *state = sbx_obj_get(p, "state");
        const msgpack_object *argvo = sbx_obj_get(p, "argv");
        const msgpack_object *tag = sbx_obj_get(p, "tag");
        char ex[32];

        if (p->type != MSGPACK_OBJECT_MAP) {
            continue;
        }
        print_num(sbx_obj_get(p, "id"), 6);
        print_num(sbx_obj_get(p, "pid"), 8);
        if (state != NULL && state->type == MSGPACK_OBJECT_STR) {
            char st[64];
            (void)printf(
                "%-8s ",
                cli_escape(st, sizeof(st), state->via.str.ptr, state->via.str.size) > 0 ? st : "-");
        } else {
            (void)printf("%-8s ", "-");
        }
        format_exit(ex, sizeof(ex), sbx_obj_get(p, "exit"));
        (void)printf("%-8s ", ex);
        if (attached) {
            (void)printf("%-8s ", yes_no(sbx_obj_get(p, "attached")));
        }
        if (dropped) {
            char d[64];
            format_dropped(d, sizeof(d), p);
            (void)printf("%-12s ", d);
        }
        if (argvo != NULL && argvo->type == MSGPACK_OBJECT_ARRAY) {
            cli_print_human(stdout, argvo);
        }
        if (tag != NULL && tag->type == MSGPACK_OBJECT_STR) {
            (void)fputs(" [", stdout);
            cli_put_text(stdout, tag->via.str.ptr, tag->via.str.size);
            (void)putchar(']');
        }
        (void)putchar('\n');
    }
    return 0;
}

/* What kill and wait read from their command lines. */
static struct {
    int signo;
    bool group;
    uint64_t timeout_ms;
    uint32_t id;
} args = { .signo = SIGTERM };

int cli_parse_proc(struct cli *cli, int opt, const char *arg)
{
    uint64_t id;

    if (opt == 'g') {
        args.group = true;
    } else if (opt == 's' && (args.signo = cli_parse_signal(arg)) < 0) {
        (void)fprintf(stderr, "sbx: kill: unknown signal \"%s\"\n", arg);
        return CLI_EXIT_USAGE;
    } else if (opt == 't' && (cli_parse_duration(arg, &args.timeout_ms) < 0 ||
                              args.timeout_ms == 0 || args.timeout_ms > UINT32_MAX)) {
        (void)fprintf(stderr, "sbx: wait: bad --timeout \"%s\"\n", arg);
        return CLI_EXIT_USAGE;
    } else if (opt == 0 &&
               (cli->argc != 1 || cli_parse_u64(cli->argv[0], &id) < 0 || id > UINT32_MAX)) {
        return CLI_OPTS_BAD;
    } else if (opt == 0) {
        args.id = (uint32_t)id;
    }
    return 0;
}

int cli_cmd_kill(struct cli *cli, struct sbx_client *c)
{
    struct sbx_msg resp;
    struct sbx_err err;
    uint32_t id;

    if (cli_call(
            c, sbx_proc_kill(sbx_client_conn(c), args.id, args.signo, args.group, NULL, &id, &err),
            &id, &resp, &err) < 0) {
        cli_print_err("kill", &err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

int cli_cmd_wait(struct cli *cli, struct sbx_client *c)
{
    struct sbx_msg resp;
    struct sbx_exit ex;
    struct sbx_err err;
    uint32_t id;

    if (cli_call(
            c,
            sbx_proc_wait(sbx_client_conn(c), args.id, (uint32_t)args.timeout_ms, NULL, &id, &err),
            &id, &resp, &err) < 0) {
        cli_print_err("wait", &err);
        /* The agent's TIMEOUT, as timeout(1); not a connection given up by the keepalive. */
        return strcmp(err.code, SBX_E_TIMEOUT) == 0 && !sbx_client_failed(c) ? 124 : CLI_EXIT_FAIL;
    }
    if (cli->json) {
        cli_json_println(resp.result);
    }
    return sbx_exit_read(resp.result, &ex, &err) == 0 ? sbx_exit_status(&ex) : CLI_EXIT_FAIL;
}
