/* Session commands: ping, info, hello, and the generic `call` escape hatch. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* The most JSON `sbx call METHOD -` reads from stdin. */
#define CALL_STDIN_MAX (SBX_FRAME_MAX)

static uint64_t now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Print a map as "key  value" lines; nested maps flatten to "outer.inner". */
static void print_table(const char *prefix, const msgpack_object *map)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        char key[128];

        if (k->type != MSGPACK_OBJECT_STR) {
            continue;
        }
        (void)snprintf(key, sizeof(key), "%s%s%.*s", prefix, prefix[0] != '\0' ? "." : "",
                       (int)k->via.str.size, k->via.str.ptr);
        if (v->type == MSGPACK_OBJECT_MAP && v->via.map.size > 0) {
            print_table(key, v);
            continue;
        }
        (void)printf("%-22s ", key);
        cli_print_human(stdout, v);
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && k->via.str.size > 3 &&
            memcmp(k->via.str.ptr + k->via.str.size - 3, "_ns", 3) == 0) {
            char human[32];
            cli_format_ns(human, sizeof(human), v->via.u64);
            (void)printf(" (%s)", human);
        }
        (void)putchar('\n');
    }
}

/* `call --json` on failure: {"error":{"code","message"[,"errno"][,"stage"][,"field"]}}. */
static void print_error_json(const struct sbx_err *err)
{
    json_t *e = json_object(), *j;

    (void)json_object_set_new(e, "code", cli_json_str(err->code, strlen(err->code)));
    (void)json_object_set_new(e, "message", cli_json_str(err->msg, strlen(err->msg)));
    if (err->sys_errno != 0) {
        (void)json_object_set_new(e, "errno", json_integer(err->sys_errno));
    }
    if (err->stage[0] != '\0') {
        (void)json_object_set_new(e, "stage", cli_json_str(err->stage, strlen(err->stage)));
    }
    if (err->field[0] != '\0') {
        (void)json_object_set_new(e, "field", cli_json_str(err->field, strlen(err->field)));
    }
    j = json_pack("{s:o}", "error", e); /* takes e */
    (void)cli_json_dump(stdout, j);
    (void)putchar('\n');
    json_decref(j);
}

static int print_result(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    if (cli->json || res->type != MSGPACK_OBJECT_MAP) {
        (void)cli_json_write(stdout, res);
        (void)putchar('\n');
    } else {
        print_table("", res);
    }
    return 0;
}

int cli_cmd_ping(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx ping [-n COUNT] [--json]\n"
                                "\n"
                                "Send COUNT (default 1) pings back to back and print each "
                                "round-trip time\n(and min/avg/max for more than one).\n";
    static const struct option opts[] = {
        { "count", required_argument, NULL, 'n' },
        CLI_OPT_JSON,
        CLI_OPTS_END,
    };
    uint64_t count = 1, min = UINT64_MAX, max = 0, sum = 0;
    uint64_t *rtts;
    struct sbx_client *c;
    struct sbx_err err;
    int opt, status = CLI_EXIT_FAIL;

    while ((opt = cli_getopt(cli, argc, argv, "+n:h", opts, usage)) > 0) {
        if (cli_parse_u64(optarg, &count) < 0 || count == 0 || count > 1000000) {
            (void)fprintf(stderr, "sbx: ping: bad count \"%s\"\n", optarg);
            return CLI_EXIT_USAGE;
        }
    }
    if (opt < 0) {
        return cli_opts_status(opt);
    }
    if (optind != argc) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    rtts = calloc(count, sizeof(*rtts));
    if (rtts == NULL) {
        return CLI_EXIT_FAIL;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        free(rtts);
        return CLI_EXIT_FAIL;
    }
    for (uint64_t i = 0; i < count; i++) {
        struct sbx_msg resp;
        uint64_t t0 = now_ns(), rtt;

        if (sbx_client_call0(c, SBX_M_PING, &resp, &err) < 0) {
            cli_print_err("ping", &err);
            goto out;
        }
        rtt = now_ns() - t0;
        rtts[i] = rtt;
        min = rtt < min ? rtt : min;
        max = rtt > max ? rtt : max;
        sum += rtt;
        if (!cli->json) {
            (void)printf("pong from %s: seq=%llu time=%.3f ms\n", sbx_client_addr(c),
                         (unsigned long long)i, (double)rtt / 1e6);
        }
    }
    if (cli->json) {
        (void)printf("{\"count\":%llu,\"rtt_ns\":[", (unsigned long long)count);
        for (uint64_t i = 0; i < count; i++) {
            (void)printf("%s%llu", i > 0 ? "," : "", (unsigned long long)rtts[i]);
        }
        (void)printf("],\"min_ns\":%llu,\"avg_ns\":%llu,\"max_ns\":%llu}\n",
                     (unsigned long long)min, (unsigned long long)(sum / count),
                     (unsigned long long)max);
    } else if (count > 1) {
        (void)printf("%llu pings: min/avg/max = %.3f/%.3f/%.3f ms\n", (unsigned long long)count,
                     (double)min / 1e6, (double)sum / (double)count / 1e6, (double)max / 1e6);
    }
    status = 0;
out:
    sbx_client_close(c);
    free(rtts);
    return status;
}

int cli_cmd_info(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx info [--json]\n"
                                "\n"
                                "Show the agent's info: versions, uptime, load, memory, boot "
                                "timings, connections, processes.\n";

    return cli_run_simple(cli, argc, argv, usage, SBX_M_INFO, print_result);
}

int cli_cmd_hello(struct cli *cli, int argc, char **argv)
{
    static const char usage[] = "Usage: sbx hello [--json]\n"
                                "\n"
                                "Say hello and print what was negotiated: protocol version, the "
                                "agent's\ncapabilities and limits (--json: the whole hello "
                                "result).\n";

    return cli_run_simple(cli, argc, argv, usage, NULL, print_result);
}

/* Read all of stdin (up to @max bytes) into a malloc'd buffer. */
static char *read_stdin(size_t max, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);

    while (buf != NULL) {
        ssize_t r;
        if (n == cap) {
            char *p;
            if (cap >= max) {
                free(buf);
                return NULL;
            }
            cap *= 2;
            p = realloc(buf, cap);
            if (p == NULL) {
                free(buf);
                return NULL;
            }
            buf = p;
        }
        r = read(STDIN_FILENO, buf + n, cap - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            free(buf);
            return NULL;
        }
        if (r == 0) {
            *len = n;
            return buf;
        }
        n += (size_t)r;
    }
    return NULL;
}

int cli_cmd_call(struct cli *cli, int argc, char **argv)
{
    static const char usage[] =
        "Usage: sbx call METHOD [JSON-PARAMS | -]\n"
        "\n"
        "Send request METHOD with params given as a JSON object (default {}; '-' reads it\n"
        "from stdin) and print the result as JSON. Strings become msgpack str, integers\n"
        "int, other numbers float64. In the output, bin values are base64 strings.\n"
        "An error is printed to stderr (and as {\"error\":{...}} on stdout with --json);\n"
        "the exit status is then 1.\n";
    const char *method, *text = "{}";
    char *owned = NULL;
    size_t len, i = 0;
    struct sbx_client *c;
    struct sbx_msg resp;
    struct sbx_err err;
    msgpack_packer *pk;
    uint32_t id;
    int r = cli_parse_simple(cli, argc, argv, usage), status = CLI_EXIT_FAIL;

    if (r < 1) {
        return cli_opts_status(r);
    }
    if (argc - r < 1 || argc - r > 2) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    method = argv[r];
    if (strlen(method) == 0 || strlen(method) > SBX_METHOD_MAX) {
        (void)fprintf(stderr, "sbx: call: method name must be 1..%u bytes\n", SBX_METHOD_MAX);
        return CLI_EXIT_USAGE;
    }
    if (argc - r == 2) {
        text = argv[r + 1];
    }
    len = strlen(text);
    if (strcmp(text, "-") == 0) {
        owned = read_stdin(CALL_STDIN_MAX, &len);
        if (owned == NULL) {
            (void)fprintf(stderr, "sbx: call: cannot read JSON params from stdin\n");
            return CLI_EXIT_USAGE;
        }
        text = owned;
    }
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) {
        i++;
    }
    if (i == len || text[i] != '{') {
        (void)fprintf(stderr, "sbx: call: params must be a JSON object\n");
        free(owned);
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        free(owned);
        return CLI_EXIT_FAIL;
    }
    pk = sbx_client_begin(c, method, &id);
    if (cli_json_to_msgpack(text, len, pk, &err) < 0) {
        cli_print_err("call", &err);
        status = CLI_EXIT_USAGE;
        goto out;
    }
    if (cli_rpc(c, id, &resp, &err) < 0) {
        cli_print_err(method, &err);
        if (cli->json) {
            print_error_json(&err);
        }
        goto out;
    }
    (void)cli_json_write(stdout, resp.result);
    (void)putchar('\n');
    status = 0;
out:
    sbx_client_close(c);
    free(owned);
    return status;
}
