/* Session commands: ping, the print function of info and hello, and the generic `call`. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The most JSON `sbx call METHOD -` reads from stdin. */
#define CALL_STDIN_MAX (SBX_FRAME_MAX)

/* Print a map as "key  value" lines; nested maps flatten to "outer.inner". */
static void print_table(const char *prefix, const msgpack_object *map)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        char key[128], shown[4 * 128];

        if (k->type != MSGPACK_OBJECT_STR) {
            continue;
        }
        (void)snprintf(key, sizeof(key), "%s%s%.*s", prefix, prefix[0] != '\0' ? "." : "",
                       (int)k->via.str.size, k->via.str.ptr);
        if (v->type == MSGPACK_OBJECT_MAP && v->via.map.size > 0) {
            print_table(key, v);
            continue;
        }
        (void)cli_escape(shown, sizeof(shown), key, strlen(key));
        (void)printf("%-22s ", shown);
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

int cli_print_map(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    if (cli->json || res->type != MSGPACK_OBJECT_MAP) {
        cli_json_println(res);
    } else {
        print_table("", res);
    }
    return 0;
}

static uint64_t ping_count = 1;

int cli_parse_ping(struct cli *cli, int opt, const char *arg)
{
    if (opt == 'n' &&
        (cli_parse_u64(arg, &ping_count) < 0 || ping_count == 0 || ping_count > 1000000)) {
        (void)fprintf(stderr, "sbx: ping: bad count \"%s\"\n", arg);
        return CLI_EXIT_USAGE;
    }
    return opt == 0 && cli->argc > 0 ? CLI_OPTS_BAD : 0;
}

int cli_cmd_ping(struct cli *cli, struct sbx_client *c)
{
    uint64_t count = ping_count, min = UINT64_MAX, max = 0, sum = 0;
    uint64_t *rtts = calloc(count, sizeof(*rtts));
    struct sbx_err err;
    int status = CLI_EXIT_FAIL;

    if (rtts == NULL) {
        return CLI_EXIT_FAIL;
    }
    for (uint64_t i = 0; i < count; i++) {
        struct sbx_msg resp;
        uint64_t t0 = cli_now_ns(), rtt;
        uint32_t id;

        if (cli_call(c, sbx_ping(sbx_client_conn(c), NULL, &id, &err), &id, &resp, &err) < 0) {
            cli_print_err("ping", &err);
            goto out;
        }
        rtt = cli_now_ns() - t0;
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
    free(rtts);
    return status;
}

/* `sbx call`: the JSON params text (and what was malloc'd for it when read from stdin). */
static const char *call_text = "{}";
static char *call_owned;
static size_t call_len = 2;

int cli_parse_call(struct cli *cli, int opt, const char *arg)
{
    size_t len;

    if (cli->argc < 1 || cli->argc > 2) {
        return CLI_OPTS_BAD;
    }
    len = strlen(cli->argv[0]);
    if (len == 0 || len > SBX_METHOD_MAX) {
        (void)fprintf(stderr, "sbx: call: method name must be 1..%u bytes\n", SBX_METHOD_MAX);
        return CLI_EXIT_USAGE;
    }
    if (cli->argc == 2 && strcmp(cli->argv[1], "-") == 0) {
        /* Read all of stdin, up to a frame's worth. */
        call_text = call_owned = malloc(CALL_STDIN_MAX + 1);
        call_len = call_owned != NULL ? fread(call_owned, 1, CALL_STDIN_MAX + 1, stdin) : 0;
        if (call_owned == NULL || ferror(stdin) || call_len > CALL_STDIN_MAX) {
            (void)fprintf(stderr, "sbx: call: cannot read JSON params from stdin\n");
            return CLI_EXIT_USAGE;
        }
        call_owned[call_len] = '\0';
    } else if (cli->argc == 2) {
        call_text = cli->argv[1];
        call_len = strlen(call_text);
    }
    if (call_text[strspn(call_text, " \t\n\r")] != '{') {
        (void)fprintf(stderr, "sbx: call: params must be a JSON object\n");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

/* Any method with any params, so the one request not made with a typed call. */
int cli_cmd_call(struct cli *cli, struct sbx_client *c)
{
    const char *method = cli->argv[0];
    struct sbx_msg resp;
    struct sbx_err err;
    uint32_t id;
    int status = CLI_EXIT_FAIL;

    if (cli_json_to_msgpack(call_text, call_len, sbx_client_begin(c, method, &id), &err) < 0) {
        cli_print_err("call", &err);
        status = CLI_EXIT_USAGE;
    } else if (sbx_client_send(c, &err) < 0 || sbx_client_wait(c, id, &resp, -1, &err) < 0) {
        cli_print_err(method, &err);
        if (cli->json) {
            print_error_json(&err);
        }
    } else {
        cli_json_println(resp.result);
        status = 0;
    }
    free(call_owned);
    return status;
}
