/*
 * sbx repl: a REPL session in the sandbox (PROTOCOL.md section 16). Interactive (a line or a
 * block in, its output and value out; ^C interrupts the running eval) or scripted with --eval.
 * Evals run in stream mode, so output appears as the code produces it.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* The longest block `sbx repl` reads from its input before evaluating it. */
#define REPL_INPUT_MAX SBX_REPL_CODE_MAX

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct repl {
    struct cli *cli;
    struct sbx_client *c;
    const char *lang;
    uint64_t session;
    uint64_t proc_id; /* the interpreter's process id, for ^C (0: not looked up yet) */
    uint64_t timeout_ms;
    bool shell;
};

static bool is_shell(const char *lang)
{
    return strcmp(lang, "sh") == 0 || strcmp(lang, "bash") == 0;
}

static int repl_start(struct repl *r, struct sbx_err *err)
{
    struct sbx_msg resp;
    msgpack_packer *pk;
    uint32_t id;
    const msgpack_object *o;

    pk = sbx_client_begin(r->c, SBX_M_REPL_START, &id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_str(pk, "language", r->lang);
    if (sbx_client_send(r->c, err) < 0 || sbx_client_wait(r->c, id, &resp, -1, err) < 0) {
        return -1;
    }
    o = sbx_obj_get(resp.result, "session");
    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "repl.start result without a session");
    }
    r->session = o->via.u64;
    return 0;
}

static void repl_close(struct repl *r)
{
    struct sbx_err err;
    struct sbx_msg resp;
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(r->c, SBX_M_REPL_CLOSE, &id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "session", r->session);
    if (sbx_client_send(r->c, &err) < 0 || sbx_client_wait(r->c, id, &resp, 5000, &err) < 0) {
        (void)err; /* the session may have ended already; nothing more to do on the way out */
    }
}

/* ^C while an eval runs: SIGINT to the interpreter's terminal group, as a local ^C would. */
static void repl_interrupt(struct repl *r)
{
    struct sbx_err err;
    struct sbx_msg resp;
    msgpack_packer *pk;
    uint32_t id;
    char tag[32];

    if (r->proc_id == 0) {
        const msgpack_object *procs;
        (void)snprintf(tag, sizeof(tag), "repl:%llu", (unsigned long long)r->session);
        if (sbx_client_call0(r->c, SBX_M_PROC_LIST, &resp, &err) < 0) {
            return;
        }
        procs = sbx_obj_get(resp.result, "procs");
        for (uint32_t i = 0;
             procs != NULL && procs->type == MSGPACK_OBJECT_ARRAY && i < procs->via.array.size;
             i++) {
            const msgpack_object *p = &procs->via.array.ptr[i];
            const msgpack_object *t = sbx_obj_get(p, "tag");
            const msgpack_object *pid = sbx_obj_get(p, "id");
            if (t != NULL && t->type == MSGPACK_OBJECT_STR && t->via.str.size == strlen(tag) &&
                memcmp(t->via.str.ptr, tag, strlen(tag)) == 0 && pid != NULL &&
                pid->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                r->proc_id = pid->via.u64;
            }
        }
        if (r->proc_id == 0) {
            return;
        }
    }
    pk = sbx_client_begin(r->c, SBX_M_PROC_KILL, &id);
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "id", r->proc_id);
    sbx_pack_kv_str(pk, "signal", "INT");
    sbx_pack_kv_bool(pk, "group", true);
    /* The reply comes back among the eval's messages; it is skipped there. */
    (void)sbx_client_send(r->c, &err);
}

static void print_text(FILE *f, const msgpack_object *o)
{
    const char *p;
    size_t n;

    if (o == NULL || !sbx_obj_bytes(o, &p, &n)) {
        return;
    }
    (void)fwrite(p, 1, n, f);
    if (n > 0 && p[n - 1] != '\n') {
        (void)fputc('\n', f);
    }
}

/* Exit status for a result: 0, 124 after a timeout, the shell's status, or 1. */
static int result_status(const struct repl *r, const msgpack_object *res)
{
    const msgpack_object *o = sbx_obj_get(res, "error");
    const msgpack_object *v = sbx_obj_get(res, "value");
    char buf[16];

    if (o == NULL || o->type != MSGPACK_OBJECT_BOOLEAN || !o->via.boolean) {
        return 0;
    }
    o = sbx_obj_get(res, "timed_out");
    if (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean) {
        return 124; /* as timeout(1) */
    }
    if (r->shell && v != NULL && sbx_obj_cstr(v, buf, sizeof(buf)) == 0) {
        int st = atoi(buf);
        return st > 0 && st < 256 ? st : 1;
    }
    return 1;
}

/* Value and error of a finished eval. Shells' value is their status: only failures are shown. */
static void print_result(const struct repl *r, const msgpack_object *res)
{
    const msgpack_object *err = sbx_obj_get(res, "error");

    (void)fflush(stdout);
    if (!r->shell) {
        print_text(stdout, sbx_obj_get(res, "value"));
    }
    if (err != NULL && err->type == MSGPACK_OBJECT_BOOLEAN && err->via.boolean) {
        (void)fflush(stdout);
        print_text(stderr, sbx_obj_get(res, "error_text"));
    }
    (void)fflush(stdout);
    (void)fflush(stderr);
}

/* Evaluate @code; returns the exit status for it, or -1 when the session is gone (error printed).
 */
static int repl_eval(struct repl *r, const char *code, size_t len)
{
    struct sbx_err err;
    struct sbx_msg m;
    msgpack_packer *pk;
    uint64_t out = 0, errs = 0;
    uint32_t id;
    bool json = r->cli->json;
    bool sent_intr = false;
    int status = CLI_EXIT_FAIL;

    pk = sbx_client_begin(r->c, SBX_M_REPL_EVAL, &id);
    (void)msgpack_pack_map(pk, 3 + (r->timeout_ms > 0));
    sbx_pack_kv_u64(pk, "session", r->session);
    sbx_pack_cstr(pk, "code");
    sbx_pack_bstr(pk, code, len);
    sbx_pack_kv_bool(pk, "stream", !json);
    if (r->timeout_ms > 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", r->timeout_ms);
    }
    interrupted = 0;
    if (sbx_client_send(r->c, &err) < 0) {
        goto fail;
    }
    if (json) {
        if (sbx_client_wait(r->c, id, &m, -1, &err) < 0) {
            goto fail;
        }
        (void)cli_json_write(stdout, m.result);
        (void)putchar('\n');
        (void)fflush(stdout);
        return result_status(r, m.result);
    }
    if (sbx_client_wait(r->c, id, &m, -1, &err) < 0) {
        goto fail;
    }
    {
        const msgpack_object *o = sbx_obj_get(m.result, "stdout");
        const msgpack_object *e = sbx_obj_get(m.result, "stderr");
        out = o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : 0;
        errs = e != NULL && e->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? e->via.u64 : 0;
    }
    for (;;) {
        int rc = sbx_client_recv(r->c, &m, 100, &err);
        if (rc < 0) {
            goto fail;
        }
        if (interrupted && !sent_intr) {
            sent_intr = true;
            repl_interrupt(r);
        }
        if (rc == 0) {
            continue;
        }
        if (m.kind == SBX_MSG_DATA && (m.stream == out || m.stream == errs)) {
            (void)cli_write_all(m.stream == out ? STDOUT_FILENO : STDERR_FILENO, m.data,
                                m.data_len);
            if (sbx_client_consumed(r->c, m.stream, m.data_len, &err) < 0) {
                goto fail;
            }
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_REPL_RESULT)) {
            print_result(r, m.params);
            status = result_status(r, m.params);
            break;
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
            const msgpack_object *e = sbx_obj_get(m.params, "error");
            if (e != NULL && e->type == MSGPACK_OBJECT_MAP) {
                sbx_err_from_obj(e, &err);
                goto fail; /* CANCELLED: the session was closed */
            }
        }
    }
    return status;

fail:
    cli_print_err("repl", &err);
    return -1;
}

/* True when @line (without its newline) asks for more lines: an open bracket, a trailing
 * backslash or block opener (":" in Python, "do"/"then"/"{"/"|" in a shell). */
static bool wants_more(const struct repl *r, const char *block, size_t blen, const char *line,
                       size_t n)
{
    int depth = 0;
    static const char *const shell_tails[] = { "do", "then", "else", "{", "|", "&&", "||", "in" };

    while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r')) {
        n--;
    }
    if (n == 0) {
        return false;
    }
    if (line[n - 1] == '\\') {
        return true;
    }
    for (size_t i = 0; i < blen; i++) {
        char ch = block[i];
        depth += ch == '(' || ch == '[' || ch == '{';
        depth -= ch == ')' || ch == ']' || ch == '}';
    }
    if (depth > 0) {
        return true;
    }
    if (r->shell) {
        for (size_t i = 0; i < sizeof(shell_tails) / sizeof(shell_tails[0]); i++) {
            size_t k = strlen(shell_tails[i]);
            if (n >= k && memcmp(line + n - k, shell_tails[i], k) == 0 &&
                (n == k || line[n - k - 1] == ' ' || line[n - k - 1] == ';' ||
                 !((line[n - k - 1] | 0x20) >= 'a' && (line[n - k - 1] | 0x20) <= 'z'))) {
                return true;
            }
        }
        return false;
    }
    return line[n - 1] == ':' || line[n - 1] == ',';
}

/* Read one block: a line, plus continuation lines up to an empty one. 0 at EOF, -1 too long. */
static int read_block(struct repl *r, FILE *in, bool prompt, char **block, size_t *blen)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    bool more = false;

    *blen = 0;
    for (;;) {
        if (prompt) {
            (void)fputs(more                              ? "... "
                        : strcmp(r->lang, "python3") == 0 ? ">>> "
                        : r->shell                        ? "$ "
                                                          : "> ",
                        stderr);
        }
        errno = 0;
        n = getline(&line, &cap, in);
        if (n < 0) {
            if (errno == EINTR && prompt) {
                /* ^C at the prompt: drop the partial block, as a local REPL does. */
                clearerr(in);
                (void)fputc('\n', stderr);
                *blen = 0;
                more = false;
                interrupted = 0;
                continue;
            }
            free(line);
            return *blen > 0 ? 1 : 0;
        }
        if (n > 0 && line[n - 1] == '\n') {
            line[--n] = '\0';
        }
        if (more && n == 0) {
            break; /* an empty line ends a block */
        }
        if (*blen + (size_t)n + 1 > REPL_INPUT_MAX) {
            free(line);
            return -1;
        }
        memcpy(*block + *blen, line, (size_t)n);
        *blen += (size_t)n;
        (*block)[(*blen)++] = '\n';
        if (!more && *blen == 1) {
            *blen = 0; /* an empty line alone: nothing to do */
            continue;
        }
        more = more || wants_more(r, *block, *blen, line, (size_t)n);
        if (!more) {
            break;
        }
    }
    free(line);
    (*blen)--; /* the last newline */
    return 1;
}

int cli_cmd_repl(struct cli *cli, int argc, char **argv)
{
    static const char usage[] =
        "Usage: sbx repl [OPTIONS] [LANG]\n"
        "\n"
        "Start a REPL session in the sandbox: sh (default), bash, python3, node or deno.\n"
        "State persists between evaluations. Output appears as the code produces it; then\n"
        "the value (python3: repr, node: util.inspect, deno: Deno.inspect) on stdout and\n"
        "any error on stderr.\n"
        "\n"
        "Without --eval, read code from stdin: a line, or a block that continues while a\n"
        "line ends in ':' ',' '\\' or an open bracket (shells: 'do' 'then' '{' '|' ...) up\n"
        "to an empty line. On a terminal there is a prompt and ^C interrupts the running\n"
        "code; ^D ends the session.\n"
        "\n"
        "Options:\n"
        "  -e, --eval CODE   evaluate CODE (repeatable, in order; stops at the first error)\n"
        "                    and exit: 0, 1 on an error, 124 on a timeout, a shell's status\n"
        "  -t, --timeout DUR interrupt an evaluation after DUR (500ms, 10s, 2m); the session\n"
        "                    survives\n"
        "      --json        print each result as JSON (no streaming)\n"
        "  -h, --help        show this help\n";
    static const struct option opts[] = {
        { "eval", required_argument, NULL, 'e' },
        { "timeout", required_argument, NULL, 't' },
        CLI_OPT_JSON,
        CLI_OPTS_END,
    };
    struct repl r = { .cli = cli, .lang = "sh" };
    const char **evals = calloc((size_t)argc + 1, sizeof(char *));
    struct sigaction sa, old_sa;
    struct sbx_err err;
    size_t nevals = 0;
    char *block = NULL;
    int opt, status = CLI_EXIT_FAIL;

    if (evals == NULL) {
        (void)fputs("sbx: repl: out of memory\n", stderr);
        return CLI_EXIT_FAIL;
    }
    while ((opt = cli_getopt(cli, argc, argv, "e:t:h", opts, usage)) > 0) {
        if (opt == 'e') {
            evals[nevals++] = optarg;
        } else if (cli_parse_duration(optarg, &r.timeout_ms) < 0 || r.timeout_ms == 0 ||
                   r.timeout_ms > UINT32_MAX) {
            (void)fprintf(stderr, "sbx: repl: bad --timeout \"%s\"\n", optarg);
            free(evals);
            return CLI_EXIT_USAGE;
        }
    }
    if (opt < 0) {
        free(evals);
        return cli_opts_status(opt);
    }
    if (optind < argc) {
        r.lang = argv[optind++];
    }
    if (optind != argc) {
        (void)fputs(usage, stderr);
        free(evals);
        return CLI_EXIT_USAGE;
    }
    r.shell = is_shell(r.lang);
    r.c = cli_connect(cli);
    if (r.c == NULL) {
        free(evals);
        return CLI_EXIT_FAIL;
    }
    if (repl_start(&r, &err) < 0) {
        cli_print_err("repl", &err);
        goto out;
    }
    /* ^C interrupts the remote eval, not this process (no SA_RESTART: a prompt's read ends). */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    (void)sigaction(SIGINT, &sa, &old_sa);
    if (nevals > 0) {
        status = 0;
        for (size_t i = 0; i < nevals && status == 0; i++) {
            status = repl_eval(&r, evals[i], strlen(evals[i]));
        }
    } else {
        bool tty = isatty(STDIN_FILENO) == 1;
        size_t blen;
        int rb;

        block = malloc(REPL_INPUT_MAX);
        if (block == NULL) {
            (void)fputs("sbx: repl: out of memory\n", stderr);
            goto closing;
        }
        status = 0;
        while ((rb = read_block(&r, stdin, tty, &block, &blen)) != 0) {
            if (rb < 0) {
                (void)fprintf(stderr, "sbx: repl: input block over %u bytes\n", REPL_INPUT_MAX);
                status = CLI_EXIT_FAIL;
                break;
            }
            status = repl_eval(&r, block, blen);
            if (status < 0) {
                break;
            }
        }
        if (tty) {
            (void)fputc('\n', stderr);
        }
    }
closing:
    (void)sigaction(SIGINT, &old_sa, NULL);
    if (status < 0) {
        status = CLI_EXIT_FAIL;
    } else {
        repl_close(&r);
    }
out:
    free(block);
    free(evals);
    sbx_client_close(r.c);
    return status;
}
