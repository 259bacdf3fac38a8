/* Process commands: ps, kill, wait. */
#include <getopt.h>
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

static int print_procs(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *procs = NULL;

    if (sbx_param_array(res, "procs", SBX_REQUIRED, UINT32_MAX, &procs, err) < 0) {
        return -1;
    }
    if (cli->json) {
        (void)cli_json_write(stdout, res);
        (void)putchar('\n');
        return 0;
    }
    (void)printf("%-6s %-8s %-8s %-8s %s\n", "ID", "PID", "STATE", "EXIT", "CMD");
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
            (void)printf("%-8.*s ", (int)state->via.str.size, state->via.str.ptr);
        } else {
            (void)printf("%-8s ", "-");
        }
        format_exit(ex, sizeof(ex), sbx_obj_get(p, "exit"));
        (void)printf("%-8s ", ex);
        if (argvo != NULL && argvo->type == MSGPACK_OBJECT_ARRAY) {
            cli_print_human(stdout, argvo);
        }
        if (tag != NULL && tag->type == MSGPACK_OBJECT_STR) {
            (void)printf(" [%.*s]", (int)tag->via.str.size, tag->via.str.ptr);
        }
        (void)putchar('\n');
    }
    return 0;
}

int cli_cmd_ps(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx ps [--json]\n"
                                "\n"
                                "List the agent's processes (running, and exited but not yet "
                                "released):\nID PID STATE EXIT CMD. EXIT is the code, or the "
                                "signal that killed it.\n";

    return cli_run_simple(cli, argc, argv, usage, SBX_M_PROC_LIST, print_procs);
}

/* What kill and wait read from their command lines. */
struct proc_args {
    int signo;
    bool group;
    uint64_t pid, timeout_ms;
};

/* kill and wait (argv[0]): their options (-s, --group, --timeout, --json), then the one ID. */
static int proc_parse(struct cli *cli, int argc, char **argv, const char *usage,
                      const char *shortopts, const struct option *opts, struct proc_args *a)
{
    int opt;

    while ((opt = cli_getopt(cli, argc, argv, shortopts, opts, usage)) > 0) {
        if (opt == 'g') {
            a->group = true;
        } else if (opt == 's' && (a->signo = cli_parse_signal(optarg)) < 0) {
            (void)fprintf(stderr, "sbx: kill: unknown signal \"%s\"\n", optarg);
            return CLI_EXIT_USAGE;
        } else if (opt == 't' && (cli_parse_duration(optarg, &a->timeout_ms) < 0 ||
                                  a->timeout_ms == 0 || a->timeout_ms > UINT32_MAX)) {
            (void)fprintf(stderr, "sbx: wait: bad --timeout \"%s\"\n", optarg);
            return CLI_EXIT_USAGE;
        }
    }
    if (opt < 0) {
        return cli_opts_status(opt);
    }
    if (optind != argc - 1 || cli_parse_u64(argv[optind], &a->pid) < 0) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    return -1;
}

/* kill or wait (argv[0]): parse, connect, send proc.kill / proc.wait, report. */
static int proc_cmd(struct cli *cli, int argc, char **argv, const char *usage,
                    const char *shortopts, const struct option *opts, struct proc_args *a)
{
    bool wait = strcmp(argv[0], "wait") == 0;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_exit ex;
    struct sbx_err err;
    msgpack_packer *pk;
    uint32_t id;
    int status = proc_parse(cli, argc, argv, usage, shortopts, opts, a);

    if (status >= 0) {
        return status;
    }
    status = CLI_EXIT_FAIL;
    c = cli_connect(cli);
    if (c == NULL) {
        return status;
    }
    pk = sbx_client_begin(c, wait ? SBX_M_PROC_WAIT : SBX_M_PROC_KILL, &id);
    (void)msgpack_pack_map(pk, wait ? 1 + (a->timeout_ms > 0) : 3);
    sbx_pack_kv_u64(pk, "id", a->pid);
    if (!wait) {
        cli_pack_signal(pk, "signal", a->signo);
        sbx_pack_kv_bool(pk, "group", a->group);
    } else if (a->timeout_ms > 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", a->timeout_ms);
    }
    if (cli_rpc(c, id, &resp, &err) < 0) {
        cli_print_err(argv[0], &err);
        if (wait && strcmp(err.code, SBX_E_TIMEOUT) == 0) {
            status = 124; /* as timeout(1) */
        }
    } else if (!wait) {
        status = 0;
    } else {
        if (cli->json) {
            (void)cli_json_write(stdout, resp.result);
            (void)putchar('\n');
        }
        if (sbx_exit_read(resp.result, &ex, &err) == 0) {
            status = sbx_exit_status(&ex);
        }
    }
    sbx_client_close(c);
    return status;
}

int cli_cmd_kill(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx kill [-s SIGNAL] [--group] ID\n"
                                "\n"
                                "Send SIGNAL (default TERM; a name like KILL or SIGINT, SIG40, "
                                "or a number 1..64)\nto process ID (an agent process id, as "
                                "shown by 'sbx ps'), or with --group to its\nwhole process "
                                "group.\n";
    static const struct option opts[] = {
        { "signal", required_argument, NULL, 's' },
        { "group", no_argument, NULL, 'g' },
        CLI_OPT_JSON,
        CLI_OPTS_END,
    };
    struct proc_args a = { .signo = 15 }; /* SIGTERM */

    return proc_cmd(cli, argc, argv, usage, "+s:gh", opts, &a);
}

int cli_cmd_wait(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx wait [--timeout DUR] [--json] ID\n"
                                "\n"
                                "Wait until process ID has exited and its output has ended, "
                                "then exit with its\nexit code (128+N when killed by signal N). "
                                "--json prints the exit record.\nWith --timeout, give up after "
                                "DUR (exit 124; the process is unaffected).\n";
    static const struct option opts[] = {
        { "timeout", required_argument, NULL, 't' },
        CLI_OPT_JSON,
        CLI_OPTS_END,
    };
    struct proc_args a = { 0 };

    return proc_cmd(cli, argc, argv, usage, "+t:h", opts, &a);
}
