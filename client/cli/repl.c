/*
 * sbx repl: a REPL session in the sandbox (PROTOCOL.md section 16). Interactive (a line or a
 * block in, its output and value out; ^C interrupts the running eval) or scripted with --eval.
 * Evals run in stream mode, so output appears as the code produces it.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* The longest block `sbx repl` reads from its input before evaluating it. */
#define REPL_INPUT_MAX SBX_REPL_CODE_MAX

/* How long the answer to a request that runs no code (proc.list, repl.close) may take. */
#define REPL_QUICK_MS 5000
/* How long an eval's result may take beyond its --timeout: the agent interrupts the code then and
 * ends the session if the interpreter does not report within 2 s (PROTOCOL.md 16.4). */
#define REPL_MARGIN_MS 10000
/* How long repl.start may take: the agent gives up on an interpreter not ready in 10 s (16.2). */
#define REPL_START_MS (10000 + REPL_MARGIN_MS)

/* ^C came and was not dealt with yet (the eval it interrupts is running, or the prompt has yet to
 * drop its block). */
static volatile sig_atomic_t interrupted;

/* A second ^C while the first is not dealt with ends sbx: the agent may not answer at all (the
 * waits are bounded only with --timeout), and a user who presses it twice wants out. */
static void on_sigint(int sig)
{
    static const char msg[] = "\nsbx: repl: interrupted twice, giving up\n";

    if (interrupted) {
        cli_tty_restore();
        (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1); /* nothing to do about a failure */
        _exit(128 + sig);
    }
    interrupted = 1;
}

struct repl {
    struct cli *cli;
    struct sbx_client *c;
    const char *lang;
    uint32_t session;
    uint32_t proc_id; /* the interpreter's process id, for ^C (0: not looked up yet) */
    bool shell;
};

/* What the options set: the --eval codes, in order, and the --timeout. */
static const char **evals;
static size_t nevals;
static uint64_t timeout_ms;

static bool is_shell(const char *lang)
{
    return strcmp(lang, "sh") == 0 || strcmp(lang, "bash") == 0;
}

/* How long an eval's response (without stream) or result (with) may take: -1, no limit, without
 * --timeout. */
static int eval_wait_ms(void)
{
    uint64_t ms = timeout_ms + REPL_MARGIN_MS; /* timeout_ms <= UINT32_MAX */

    if (timeout_ms == 0) {
        return -1;
    }
    return ms < INT32_MAX ? (int)ms : INT32_MAX;
}

/* Finish typed call @rc (made with request id *@id) as cli_call does, but wait at most
 * @wait_ms (< 0: no limit) for its response: TIMEOUT after that. 0 with *@resp, or -1. */
static int call_within(struct repl *r, int rc, const uint32_t *id, int wait_ms,
                       struct sbx_msg *resp, struct sbx_err *err)
{
    if (sbx_client_sent(r->c, rc, err) < 0) {
        return -1;
    }
    return sbx_client_wait(r->c, *id, resp, wait_ms, err);
}

static int repl_start(struct repl *r, struct sbx_err *err)
{
    struct sbx_msg resp;
    uint64_t session;
    uint32_t id;

    if (call_within(r, sbx_repl_start(sbx_client_conn(r->c), r->lang, NULL, &id, err), &id,
                    REPL_START_MS, &resp, err) < 0 ||
        sbx_param_u64(resp.result, "session", SBX_REQUIRED, 1, UINT32_MAX, &session, err) < 0) {
        return -1;
    }
    r->session = (uint32_t)session;
    return 0;
}

static void repl_close(struct repl *r)
{
    struct sbx_err err;
    struct sbx_msg resp;
    uint32_t id;

    /* The session may have ended already; nothing more to do on the way out. */
    if (sbx_client_sent(r->c, sbx_repl_close(sbx_client_conn(r->c), r->session, NULL, &id, &err),
                        &err) == 0) {
        (void)sbx_client_wait(r->c, id, &resp, REPL_QUICK_MS, &err);
    }
}

/* The interpreter's process: the one proc.list tags "repl:<session>". */
static void find_proc(struct repl *r)
{
    const msgpack_object *procs;
    struct sbx_err err;
    struct sbx_msg resp;
    uint32_t id;
    char tag[32];
    int n = snprintf(tag, sizeof(tag), "repl:%u", r->session);

    if (call_within(r, sbx_proc_list(sbx_client_conn(r->c), NULL, &id, &err), &id, REPL_QUICK_MS,
                    &resp, &err) < 0 ||
        sbx_param_array(resp.result, "procs", SBX_REQUIRED, UINT32_MAX, &procs, &err) < 0) {
        return;
    }
    for (uint32_t i = 0; i < procs->via.array.size; i++) {
        const msgpack_object *p = &procs->via.array.ptr[i];
        const msgpack_object *t = sbx_obj_get(p, "tag");
        uint64_t pid;

        if (t != NULL && t->type == MSGPACK_OBJECT_STR && t->via.str.size == (uint32_t)n &&
            memcmp(t->via.str.ptr, tag, (size_t)n) == 0 &&
            sbx_param_u64(p, "id", SBX_REQUIRED, 1, UINT32_MAX, &pid, &err) == 0) {
            r->proc_id = (uint32_t)pid;
        }
    }
}

/* ^C while an eval runs: SIGINT to the interpreter's terminal group, as a local ^C would. The
 * reply comes back among the eval's messages; it is skipped there. */
static void repl_interrupt(struct repl *r)
{
    struct sbx_err err;
    uint32_t id;

    if (r->proc_id == 0) {
        find_proc(r);
    }
    if (r->proc_id != 0) {
        (void)sbx_client_sent(
            r->c, sbx_proc_kill(sbx_client_conn(r->c), r->proc_id, SIGINT, true, NULL, &id, &err),
            &err);
    }
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
    struct sbx_eval_streams ev = { 0 };
    struct sbx_stream_note note;
    struct sbx_err err;
    struct sbx_msg m;
    uint32_t id;
    bool json = r->cli->json;
    bool sent_intr = false;
    int wait_ms = eval_wait_ms();
    uint64_t deadline = wait_ms < 0 ? UINT64_MAX : cli_now_ns() + (uint64_t)wait_ms * 1000000u;

    interrupted = 0;
    if (call_within(r,
                    sbx_repl_eval(sbx_client_conn(r->c), r->session, code, len,
                                  (uint32_t)timeout_ms, !json, NULL, &id, &err),
                    &id, wait_ms, &m, &err) < 0 ||
        (!json && sbx_eval_streams_read(m.result, &ev, &err) < 0)) {
        goto fail;
    }
    if (json) {
        cli_json_println(m.result);
        (void)fflush(stdout);
        return result_status(r, m.result);
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
        if (rc == 0 && cli_now_ns() >= deadline) {
            (void)sbx_err_set(&err, SBX_E_TIMEOUT, "no result %d ms after the eval's --timeout",
                              REPL_MARGIN_MS);
            goto fail;
        }
        if (rc == 0) {
            continue;
        }
        if (m.kind == SBX_MSG_DATA && (m.stream == ev.out || m.stream == ev.err)) {
            (void)sbx_write_all(m.stream == ev.out ? STDOUT_FILENO : STDERR_FILENO, m.data,
                                m.data_len);
            if (sbx_client_consumed(r->c, m.stream, m.data_len, &err) < 0) {
                goto fail;
            }
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_REPL_RESULT)) {
            print_result(r, m.params);
            return result_status(r, m.params);
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_STREAM_END) &&
                   sbx_stream_note_read(SBX_N_STREAM_END, m.params, &note, &err) == 0 &&
                   note.has_error) {
            err = note.error;
            goto fail; /* CANCELLED: the session was closed */
        }
    }

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

int cli_parse_repl(struct cli *cli, int opt, const char *arg)
{
    if (opt == 'e' && cli_push(&evals, &nevals, arg) < 0) {
        (void)fputs("sbx: repl: out of memory\n", stderr);
        return CLI_EXIT_FAIL;
    }
    if (opt == 't' &&
        (cli_parse_duration(arg, &timeout_ms) < 0 || timeout_ms == 0 || timeout_ms > UINT32_MAX)) {
        (void)fprintf(stderr, "sbx: repl: bad --timeout \"%s\"\n", arg);
        return CLI_EXIT_USAGE;
    }
    return opt == 0 && cli->argc > 1 ? CLI_OPTS_BAD : 0;
}

int cli_cmd_repl(struct cli *cli, struct sbx_client *c)
{
    struct repl r = { .cli = cli, .c = c, .lang = cli->argc > 0 ? cli->argv[0] : "sh" };
    struct sigaction sa, old_sa;
    struct sbx_err err;
    char *block = NULL;
    int status = CLI_EXIT_FAIL;

    r.shell = is_shell(r.lang);
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
            interrupted = 0; /* a ^C the eval took is done with */
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
    return status;
}
