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

int cli_cmd_ps(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx ps [--json]\n"
                                "\n"
                                "List the agent's processes (running, and exited but not yet "
                                "released):\nID PID STATE EXIT CMD. EXIT is the code, or the "
                                "signal that killed it.\n";
    const msgpack_object *procs = NULL;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_err err;
    int status;

    c = cli_connect_simple(cli, argc, argv, usage, &status);
    if (c == NULL) {
        return status;
    }
    status = CLI_EXIT_FAIL;
    if (sbx_client_call0(c, SBX_M_PROC_LIST, &resp, &err) < 0 ||
        sbx_param_array(resp.result, "procs", SBX_REQUIRED, UINT32_MAX, &procs, &err) < 0) {
        cli_print_err("ps", &err);
        goto out;
    }
    status = 0;
    if (cli->json) {
        (void)cli_json_write(stdout, resp.result);
        (void)putchar('\n');
        goto out;
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
out:
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
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int signo = 15; /* SIGTERM */
    bool group = false;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_err err;
    msgpack_packer *pk;
    uint64_t pid;
    uint32_t id;
    int opt, status = CLI_EXIT_FAIL;

    while ((opt = getopt_long(argc, argv, "+s:gh", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            signo = cli_parse_signal(optarg);
            if (signo < 0) {
                (void)fprintf(stderr, "sbx: kill: unknown signal \"%s\"\n", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'g':
            group = true;
            break;
        case 'j':
            cli->json = true;
            break;
        case 'h':
            (void)fputs(usage, stdout);
            return 0;
        default:
            (void)fputs(usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || cli_parse_u64(argv[optind], &pid) < 0) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        return CLI_EXIT_FAIL;
    }
    pk = sbx_client_begin(c, SBX_M_PROC_KILL, &id);
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "id", pid);
    cli_pack_signal(pk, "signal", signo);
    sbx_pack_kv_bool(pk, "group", group);
    if (sbx_client_send(c, &err) < 0 || sbx_client_wait(c, id, &resp, -1, &err) < 0) {
        cli_print_err("kill", &err);
    } else {
        status = 0;
    }
    sbx_client_close(c);
    return status;
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
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct sbx_exit ex;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_err err;
    msgpack_packer *pk;
    uint64_t pid, timeout_ms = 0;
    uint32_t id;
    int opt, status = CLI_EXIT_FAIL;

    while ((opt = getopt_long(argc, argv, "+t:h", opts, NULL)) != -1) {
        switch (opt) {
        case 't':
            if (cli_parse_duration(optarg, &timeout_ms) < 0 || timeout_ms == 0 ||
                timeout_ms > UINT32_MAX) {
                (void)fprintf(stderr, "sbx: wait: bad --timeout \"%s\"\n", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'j':
            cli->json = true;
            break;
        case 'h':
            (void)fputs(usage, stdout);
            return 0;
        default:
            (void)fputs(usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || cli_parse_u64(argv[optind], &pid) < 0) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        return CLI_EXIT_FAIL;
    }
    pk = sbx_client_begin(c, SBX_M_PROC_WAIT, &id);
    (void)msgpack_pack_map(pk, timeout_ms > 0 ? 2 : 1);
    sbx_pack_kv_u64(pk, "id", pid);
    if (timeout_ms > 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", timeout_ms);
    }
    if (sbx_client_send(c, &err) < 0 || sbx_client_wait(c, id, &resp, -1, &err) < 0) {
        cli_print_err("wait", &err);
        if (strcmp(err.code, SBX_E_TIMEOUT) == 0) {
            status = 124; /* as timeout(1) */
        }
        goto out;
    }
    if (cli->json) {
        (void)cli_json_write(stdout, resp.result);
        (void)putchar('\n');
    }
    if (sbx_exit_read(resp.result, &ex, &err) == 0) {
        status = sbx_exit_status(&ex);
    }
out:
    sbx_client_close(c);
    return status;
}
