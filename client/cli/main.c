/* sbx: the command-line client. Global options, then dispatch through the command table. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef SBX_VERSION
#define SBX_VERSION "0.0.0"
#endif

struct command {
    const char *name;
    int (*run)(struct cli *cli, int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    { "exec", cli_cmd_exec, "run a command, stream its output, exit with its status" },
    { "sh", cli_cmd_sh, "run a shell command line (/bin/sh -c), like exec" },
    { "shell", cli_cmd_shell, "open an interactive terminal session (a remote PTY)" },
    { "ping", cli_cmd_ping, "measure the round-trip time to the agent" },
    { "info", cli_cmd_info, "show agent and guest information" },
    { "hello", cli_cmd_hello, "show the negotiated version, capabilities and limits" },
    { "env", cli_cmd_env, "list, get, set or unset the base environment of new processes" },
    { "ps", cli_cmd_ps, "list processes" },
    { "kill", cli_cmd_kill, "send a signal to a process" },
    { "wait", cli_cmd_wait, "wait for a process and exit with its status" },
    { "pack", cli_cmd_pack, "package a guest directory into a deploy archive with a manifest" },
    { "cp", cli_cmd_cp, "copy files into or out of the sandbox (sbx cp LOCAL :REMOTE)" },
    { "fs", cli_cmd_fs, "files in the guest: ls, stat, cat, write, mkdir, rm, find, watch, ..." },
    { "repl", cli_cmd_repl, "evaluate code in a persistent interpreter (sh, bash, python3, node)" },
    { "call", cli_cmd_call, "send any request with JSON params and print the JSON result" },
};

static void usage(FILE *f)
{
    (void)fprintf(f, "Usage: sbx [GLOBAL OPTIONS] COMMAND [ARGS...]\n"
                     "\n"
                     "Drive an sbx-agent inside a sandbox VM.\n"
                     "\n"
                     "Global options (before the command):\n"
                     "  -c, --connect ADDR  agent address (default $SBX_ADDR):\n"
                     "                        unix:/path  vsock:CID:PORT  fc:/path/v.sock:PORT  "
                     "tcp:HOST:PORT\n"
                     "      --token T       auth token sent in hello (default $SBX_TOKEN)\n"
                     "      --json          JSON output for scripts\n"
                     "      --timeout DUR   connect + hello timeout (default 10s; 500ms, 2m, ...)\n"
                     "  -h, --help          show this help\n"
                     "      --version       show the version\n"
                     "\n"
                     "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        (void)fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].summary);
    }
    (void)fprintf(f, "\nRun 'sbx COMMAND --help' for the options of a command.\n");
}

void cli_print_err(const char *cmd, const struct sbx_err *err)
{
    if (err->code[0] != '\0' && strstr(err->msg, err->code) == NULL) {
        (void)fprintf(stderr, "sbx: %s: %s (%s)\n", cmd, err->msg, err->code);
    } else {
        (void)fprintf(stderr, "sbx: %s: %s\n", cmd, err->msg);
    }
}

int cli_getopt(struct cli *cli, int argc, char **argv, const char *shortopts,
               const struct option *longopts, const char *usage)
{
    for (;;) {
        int opt = getopt_long(argc, argv, shortopts, longopts, NULL);

        switch (opt) {
        case -1:
            return 0;
        case 'j':
            cli->json = true;
            break;
        case 'h':
            (void)fputs(usage, stdout);
            return CLI_OPTS_HELP;
        case '?':
        case ':':
            (void)fputs(usage, stderr);
            return CLI_OPTS_BAD;
        default:
            return opt;
        }
    }
}

int cli_rpc(struct sbx_client *c, uint32_t id, struct sbx_msg *resp, struct sbx_err *err)
{
    return sbx_client_send(c, err) < 0 || sbx_client_wait(c, id, resp, -1, err) < 0 ? -1 : 0;
}

int cli_rpc_stream(struct sbx_client *c, uint32_t id, uint32_t *sid, struct sbx_err *err)
{
    struct sbx_msg resp;
    uint64_t v;

    if (cli_rpc(c, id, &resp, err) < 0 ||
        sbx_param_u64(resp.result, "stream", SBX_REQUIRED, 1, UINT32_MAX, &v, err) < 0) {
        return -1;
    }
    *sid = (uint32_t)v;
    return 0;
}

int cli_parse_simple(struct cli *cli, int argc, char **argv, const char *usage)
{
    static const struct option opts[] = { CLI_OPT_JSON, CLI_OPTS_END };
    int r = cli_getopt(cli, argc, argv, "+h", opts, usage);

    return r < 0 ? r : optind;
}

int cli_opts_status(int r)
{
    return r == CLI_OPTS_HELP ? 0 : CLI_EXIT_USAGE;
}

struct sbx_client *cli_connect_simple(struct cli *cli, int argc, char **argv, const char *usage,
                                      int *status)
{
    struct sbx_client *c;
    int r = cli_parse_simple(cli, argc, argv, usage);

    if (r < 1) {
        *status = cli_opts_status(r);
        return NULL;
    }
    if (r != argc) {
        (void)fputs(usage, stderr);
        *status = CLI_EXIT_USAGE;
        return NULL;
    }
    c = cli_connect(cli);
    *status = c == NULL ? CLI_EXIT_FAIL : 0;
    return c;
}

int cli_run_simple(struct cli *cli, int argc, char **argv, const char *usage, const char *method,
                   cli_result_fn print)
{
    const msgpack_object *res;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_err err;
    int status;

    c = cli_connect_simple(cli, argc, argv, usage, &status);
    if (c == NULL) {
        return status;
    }
    sbx_err_clear(&err);
    if (method != NULL) {
        res = sbx_client_call0(c, method, &resp, &err) < 0 ? NULL : resp.result;
    } else if ((res = sbx_client_hello_result(c)) == NULL) {
        goto out;
    }
    if (res == NULL || print(cli, res, &err) < 0) {
        cli_print_err(argv[0], &err);
        status = CLI_EXIT_FAIL;
    }
out:
    sbx_client_close(c);
    return status;
}

struct sbx_client *cli_connect(const struct cli *cli)
{
    struct sbx_err err;
    struct sbx_client *c;

    sbx_err_clear(&err);
    c = sbx_client_connect(cli->addr, cli->connect_timeout_ms, &err);
    if (c == NULL) {
        (void)fprintf(stderr, "sbx: %s (%s)\n", err.msg, err.code);
        return NULL;
    }
    if (sbx_client_hello(c, cli->token, &err) < 0) {
        (void)fprintf(stderr, "sbx: hello: %s (%s)\n", err.msg, err.code);
        sbx_client_close(c);
        return NULL;
    }
    return c;
}

/* Commands that never connect print their help without an address being set. */
static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return false;
        }
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return true;
        }
    }
    return false;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "connect", required_argument, NULL, 'c' },
        { "token", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        { "timeout", required_argument, NULL, 'T' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    struct cli cli = { .addr = getenv("SBX_ADDR"),
                       .token = getenv("SBX_TOKEN"),
                       .json = false,
                       .connect_timeout_ms = SBX_CLIENT_CONNECT_TIMEOUT_MS };
    const char *name;
    int opt;

    /* A closed pipe is an error to handle where it happens (EPIPE), never a silent death. */
    (void)signal(SIGPIPE, SIG_IGN);
    if (cli.token != NULL && cli.token[0] == '\0') {
        cli.token = NULL;
    }
    while ((opt = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        uint64_t ms;
        switch (opt) {
        case 'c':
            cli.addr = optarg;
            break;
        case 't':
            cli.token = optarg;
            break;
        case 'j':
            cli.json = true;
            break;
        case 'T':
            if (cli_parse_duration(optarg, &ms) < 0 || ms > 86400000) {
                (void)fprintf(stderr, "sbx: bad --timeout \"%s\" (e.g. 500ms, 10s, 2m)\n", optarg);
                return CLI_EXIT_USAGE;
            }
            cli.connect_timeout_ms = (int)ms;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            (void)printf("sbx %s (protocol %u)\n", SBX_VERSION, SBX_PROTO_VERSION);
            return 0;
        default:
            usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    name = argv[optind];
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) != 0) {
            continue;
        }
        argc -= optind;
        argv += optind;
        if ((cli.addr == NULL || cli.addr[0] == '\0') && !wants_help(argc, argv)) {
            (void)fprintf(stderr, "sbx: no agent address: use -c ADDR or set SBX_ADDR "
                                  "(e.g. unix:/run/sbx.sock, vsock:3:1024)\n");
            return strcmp(name, "exec") == 0 || strcmp(name, "sh") == 0 ||
                           strcmp(name, "shell") == 0
                       ? 125
                       : CLI_EXIT_USAGE;
        }
        optind = 0; /* glibc: full re-initialisation for the command's own getopt_long */
        return commands[i].run(&cli, argc, argv);
    }
    (void)fprintf(stderr, "sbx: unknown command \"%s\"; run 'sbx --help'\n", name);
    return CLI_EXIT_USAGE;
}
