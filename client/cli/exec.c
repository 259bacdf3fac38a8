/*
 * sbx exec / sbx sh / sbx shell: spawn a process (optionally on a PTY), stream its stdio both
 * ways, pass its exit status through.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* Exit statuses for failures before the remote process runs (as docker/podman use them). */
#define EXIT_SBX_FAILED 125
#define EXIT_CANNOT_RUN 126
#define EXIT_NOT_FOUND  127

/* How many local SIGINTs are forwarded before sbx gives up on the agent and exits. */
#define SIGINT_GIVE_UP 3

/* The terminal sbx shell / exec -t hands the process when $TERM is unset or unusable. */
#define DEFAULT_TERM "xterm-256color"

/* What `sbx shell` runs without a command. */
static char *const default_shell[] = { "/bin/sh", "-l", NULL };

/* The write end of the self-pipe the signal handler reports into (signal-safe global). */
static volatile int sig_pipe_w = -1;
/* PTY mode: SIGTERM and SIGHUP restore the local terminal in the handler already. */
static volatile sig_atomic_t sig_pty;
/* How many SIGTERM / SIGHUP arrived in PTY mode (a second one while we are stuck is fatal). */
static volatile sig_atomic_t sig_hangups;

enum exec_mode {
    MODE_EXEC,  /* sbx exec CMD ARG... */
    MODE_SH,    /* sbx sh 'COMMAND LINE' */
    MODE_SHELL, /* sbx shell [-- CMD ARG...]: always a PTY */
};

/* What the requests sent while streaming were, by id % REQ_SLOTS, for error messages. */
#define REQ_SLOTS 64
enum { REQ_KILL = 1, REQ_RESIZE = 2 };

/* One remote output stream and where its bytes go. */
struct sink {
    const char *name; /* "stdout" / "stderr" */
    uint32_t sid;     /* 0: the process has no such stream */
    int fd;           /* local destination */
    bool done;        /* ended, cancelled by us, or absent */
    char *cap;        /* --json: captured bytes */
    size_t cap_len, cap_size;
    bool truncated;
};

struct exec {
    struct cli *cli;
    struct sbx_client *c;
    const char *what; /* the command, for messages */
    uint64_t proc;
    uint32_t sin;
    bool stdin_open;
    struct sink out, err;
    bool exited;
    bool has_exit;      /* ex holds a well-formed exit map */
    struct sbx_exit ex; /* the proc.exit params */
    json_t *exit_json;  /* --json: the proc.exit params */
    int sigints;
    /* PTY mode */
    bool pty;
    bool raw;            /* the local stdin is a terminal we put in raw mode */
    unsigned rows, cols; /* the size the remote terminal has (as far as we told it) */
    bool in_partial;     /* the last input byte sent did not end a line */
    int quit_status;     /* pump returned 1: exit with this */
    uint8_t req[REQ_SLOTS];
};

struct exec_opts {
    const char **env;
    int nenv;
    const char *cwd;
    const char *user;
    uint64_t timeout_ms;
    bool no_stdin;
    bool merge;
    bool clear_env;
    bool tty;
};

/* Print an sbx message to stderr; while the terminal is raw, "\n" becomes "\r\n". */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    char buf[1024], out[2048];
    size_t n = 0;
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (!cli_tty_is_raw()) {
        (void)fputs(buf, stderr);
        return;
    }
    for (const char *p = buf; *p != '\0' && n < sizeof(out) - 2; p++) {
        if (*p == '\n') {
            out[n++] = '\r';
        }
        out[n++] = *p;
    }
    (void)fwrite(out, 1, n, stderr);
}

/* "sbx: exec CMD: <what>: <message> (<code>)", the code left out when the message has it. */
static void say_err(const struct exec *x, const char *what, const struct sbx_err *e)
{
    if (e->code[0] != '\0' && strstr(e->msg, e->code) == NULL) {
        say("sbx: exec %s: %s: %s (%s)\n", x->what, what, e->msg, e->code);
    } else {
        say("sbx: exec %s: %s: %s\n", x->what, what, e->msg);
    }
}

/* The options exec, sh and shell share, as their --help lists them. */
#define EXEC_OPTIONS_HELP                                                                          \
    "Options:\n"                                                                                   \
    "  -e, --env K=V      set a variable (repeatable); --env K copies K from here\n"               \
    "      --clear-env    start from an empty environment, not the agent's base env\n"             \
    "  -w, --cwd DIR      working directory\n"                                                     \
    "  -u, --user U       run as user name U, or UID, or UID:GID\n"                                \
    "      --timeout DUR  kill the process after DUR (e.g. 500ms, 10s, 2m)\n"

static void shell_usage(FILE *f)
{
    (void)fprintf(
        f,
        "Usage: sbx shell [OPTIONS] [-- CMD [ARG...]]\n"
        "\n"
        "Open an interactive terminal session in the sandbox: CMD (default: /bin/sh -l) runs on\n"
        "a remote PTY of this terminal's size with TERM=$TERM (xterm-256color when unset), this\n"
        "terminal is in raw mode until sbx exits (every key, ^C and ^D included, goes to the\n"
        "remote side), and window size changes are passed on.\n"
        "\n" EXEC_OPTIONS_HELP "  -h, --help         show this help\n"
        "\n"
        "When this stdin is not a terminal there is no raw mode: the input is passed through\n"
        "as it is, and at its end sbx sends ^D (two when the last line is unfinished), the\n"
        "terminal's end-of-file, so a shell or cat reading it ends.\n"
        "\n"
        "SIGTERM or SIGHUP received here hangs up: the terminal is restored, the remote process\n"
        "group gets SIGHUP, and sbx exits with 128+N. SIGINT and SIGQUIT sent to sbx (not typed:\n"
        "typed ^C is a byte for the remote terminal) are forwarded to the remote process group.\n"
        "\n"
        "Exit status: the process's own, or 128+N when it was killed by signal N;\n"
        "127 when the command is not found, 126 when it cannot be executed,\n"
        "125 when sbx itself or the spawn failed otherwise.\n");
}

static void exec_usage(FILE *f, bool shell)
{
    if (shell) {
        (void)fprintf(f, "Usage: sbx sh [OPTIONS] [--] 'COMMAND LINE'\n"
                         "\n"
                         "Run COMMAND LINE with /bin/sh -c in the sandbox (several arguments are "
                         "joined with spaces);\notherwise exactly like 'sbx exec'.\n");
    } else {
        (void)fprintf(f, "Usage: sbx exec [OPTIONS] [--] CMD [ARG...]\n"
                         "\n"
                         "Run CMD in the sandbox (PATH lookup in the guest), stream its stdout "
                         "and stderr here,\nforward this stdin to it, and exit with its exit "
                         "status.\n");
    }
    (void)fprintf(
        f,
        "\n" EXEC_OPTIONS_HELP
        "  -t, --tty          run the process on a remote PTY (as 'sbx shell' does): stdout\n"
        "                     and stderr arrive merged on stdout, this terminal goes raw\n"
        "                     while it runs if stdin is one, window size changes are passed\n"
        "                     on; see 'sbx shell --help' for input without a terminal\n"
        "  -n, --no-stdin     give the process /dev/null as stdin (also automatic when this\n"
        "                     stdin is /dev/null or closed); with --tty: send it no input\n"
        "      --merge        send the process's stderr into its stdout stream\n"
        "      --json         capture the output and print one JSON object at the end:\n"
        "                     {\"exit\":{...proc.exit...},\"stdout\":\"...\",\"stderr\":\"...\"}\n"
        "                     (output as JSON strings; invalid UTF-8 becomes U+FFFD; at most\n"
        "                     16 MiB per stream, then \"stdout_truncated\":true)\n"
        "  -h, --help         show this help\n"
        "\n"
        "SIGINT, SIGTERM, SIGHUP and SIGQUIT received here are forwarded to the remote\n"
        "process group (after the third SIGINT sbx exits on its own with 130).\n"
        "\n"
        "Exit status: the process's own, or 128+N when it was killed by signal N;\n"
        "127 when the command is not found, 126 when it cannot be executed,\n"
        "125 when sbx itself or the spawn failed otherwise.\n");
}

static bool stdin_is_null(void)
{
    struct stat st, nst;

    if (fstat(STDIN_FILENO, &st) < 0) {
        return true; /* closed */
    }
    if (!S_ISCHR(st.st_mode) || stat("/dev/null", &nst) < 0) {
        return false;
    }
    return st.st_rdev == nst.st_rdev;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
    }
    return true;
}

/* --- spawn -------------------------------------------------------------------------------- */

/* --user NAME, UID or UID:GID into the params. */
static void set_user(struct sbx_spawn_params *p, const char *user)
{
    const char *colon = strchr(user, ':');

    if (colon != NULL && all_digits(user, (size_t)(colon - user)) &&
        all_digits(colon + 1, strlen(colon + 1))) {
        p->has_uid = p->has_gid = true;
        p->uid = (uint32_t)strtoull(user, NULL, 10);
        p->gid = (uint32_t)strtoull(colon + 1, NULL, 10);
    } else if (all_digits(user, strlen(user))) {
        p->has_uid = true;
        p->uid = (uint32_t)strtoull(user, NULL, 10);
    } else {
        p->user = user;
    }
}

/* The value an --env entry sets, or NULL when it names an unset local variable. */
static const char *env_value(const char *entry, size_t *name_len)
{
    const char *eq = strchr(entry, '=');

    if (eq != NULL) {
        *name_len = (size_t)(eq - entry);
        return eq + 1;
    }
    *name_len = strlen(entry);
    return getenv(entry);
}

/* $TERM if the protocol accepts it (1..64 bytes of printable ASCII), else DEFAULT_TERM. */
static const char *term_name(void)
{
    const char *t = getenv("TERM");
    size_t n = t != NULL ? strlen(t) : 0;

    if (n == 0 || n > 64) {
        return DEFAULT_TERM;
    }
    for (size_t i = 0; i < n; i++) {
        if (t[i] <= ' ' || t[i] > '~') {
            return DEFAULT_TERM;
        }
    }
    return t;
}

/*
 * The --env entries as "NAME=VALUE" (a bare NAME takes the local value; unset ones are left out),
 * NULL-terminated, in @env (nenv + 1 slots); the strings made here are in @own. NULL: none.
 */
static const char *const *spawn_env(const struct exec_opts *o, const char **env, char **own)
{
    int n = 0;

    for (int i = 0; i < o->nenv; i++) {
        size_t len;
        const char *val = env_value(o->env[i], &len);
        own[i] = NULL;
        if (val == NULL) {
            continue;
        }
        if (o->env[i][len] != '=') {
            size_t vlen = strlen(val);
            own[i] = malloc(len + vlen + 2);
            if (own[i] == NULL) {
                continue;
            }
            memcpy(own[i], o->env[i], len);
            own[i][len] = '=';
            memcpy(own[i] + len + 1, val, vlen + 1);
        }
        env[n++] = own[i] != NULL ? own[i] : o->env[i];
    }
    env[n] = NULL;
    return n > 0 ? env : NULL;
}

static int spawn(struct exec *x, const struct exec_opts *o, char *const *argv, const char *command,
                 struct sbx_err *err)
{
    struct sbx_spawn_params p = { 0 };
    struct sbx_pty_params pty = { .rows = x->rows, .cols = x->cols, .term = term_name() };
    struct sbx_spawn_result r;
    struct sbx_msg resp;
    const char **env = calloc((size_t)o->nenv + 1, sizeof(*env));
    char **own = calloc((size_t)o->nenv + 1, sizeof(*own));
    uint32_t id;

    if (env == NULL || own == NULL) {
        free(env);
        free(own);
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    if (command != NULL) {
        p.command = command;
    } else {
        p.argv = (const char *const *)argv;
    }
    if (o->tty) {
        /* The agent ignores stdin/stdout/stderr here: the PTY is all three. */
        p.pty = &pty;
    } else {
        p.stdin_mode = !o->no_stdin && !stdin_is_null() ? SBX_STDIO_PIPE : SBX_STDIO_NULL;
        p.stdout_mode = SBX_STDIO_PIPE;
        p.stderr_mode = o->merge ? SBX_STDIO_STDOUT : SBX_STDIO_PIPE;
    }
    p.env = spawn_env(o, env, own);
    p.clear_env = o->clear_env;
    p.cwd = o->cwd;
    if (o->user != NULL) {
        set_user(&p, o->user);
    }
    p.timeout_ms = (uint32_t)o->timeout_ms;
    sbx_spawn_params_pack(sbx_client_begin(x->c, SBX_M_PROC_SPAWN, &id), &p);
    for (int i = 0; i < o->nenv; i++) {
        free(own[i]);
    }
    free(own);
    free(env);
    if (sbx_client_send(x->c, err) < 0 || sbx_client_wait(x->c, id, &resp, -1, err) < 0) {
        return -1;
    }
    if (sbx_spawn_result_read(resp.result, &r, err) < 0) {
        return -1;
    }
    x->proc = r.id;
    x->sin = r.in;
    x->out.sid = r.out;
    x->err.sid = r.err;
    x->out.done = x->out.sid == 0;
    x->err.done = x->err.sid == 0;
    /* On a PTY the input stream always exists; --no-stdin just never sends anything. */
    x->stdin_open = x->sin != 0 && !o->no_stdin;
    return 0;
}

/* "sbx: exec CMD: <message> (<code>, stage <stage>)" and the matching exit status. */
static int spawn_failed(const struct exec *x, const struct sbx_err *err)
{
    bool exec_stage = err->stage[0] == '\0' || strcmp(err->stage, "exec") == 0;

    if (err->stage[0] != '\0') {
        (void)fprintf(stderr, "sbx: exec %s: %s (%s, stage %s)\n", x->what, err->msg, err->code,
                      err->stage);
    } else {
        (void)fprintf(stderr, "sbx: exec %s: %s (%s)\n", x->what, err->msg, err->code);
    }
    /* 127/126 mean "the command" as shells use them; a missing cwd is not a missing command. */
    if (exec_stage && strcmp(err->code, "ENOENT") == 0) {
        return EXIT_NOT_FOUND;
    }
    if (exec_stage && (strcmp(err->code, "EACCES") == 0 || strcmp(err->code, "ENOEXEC") == 0)) {
        return EXIT_CANNOT_RUN;
    }
    return EXIT_SBX_FAILED;
}

/* --- streaming ---------------------------------------------------------------------------- */

static void capture(struct sink *s, const uint8_t *p, size_t n)
{
    if (s->cap_len + n > CLI_CAPTURE_MAX) {
        n = CLI_CAPTURE_MAX - s->cap_len;
        s->truncated = true;
    }
    if (n == 0) {
        return;
    }
    if (s->cap_len + n > s->cap_size) {
        size_t sz = s->cap_size != 0 ? s->cap_size : 65536;
        char *q;
        while (sz < s->cap_len + n) {
            sz *= 2;
        }
        q = realloc(s->cap, sz);
        if (q == NULL) {
            s->truncated = true;
            return;
        }
        s->cap = q;
        s->cap_size = sz;
    }
    memcpy(s->cap + s->cap_len, p, n);
    s->cap_len += n;
}

static int deliver(struct exec *x, struct sink *s, const struct sbx_msg *m, struct sbx_err *err)
{
    if (x->cli->json) {
        capture(s, m->data, m->data_len);
    } else {
        int r = cli_write_all(s->fd, m->data, m->data_len);
        if (r < 0) {
            /* Our side of this stream is gone: tell the agent and carry on with the rest. */
            if (r != -EPIPE) {
                say("sbx: exec %s: writing remote %s: %s\n", x->what, s->name, strerror(-r));
            }
            s->done = true;
            return sbx_client_stream_cancel(x->c, s->sid, err);
        }
    }
    return sbx_client_consumed(x->c, s->sid, m->data_len, err);
}

static struct sink *sink_for(struct exec *x, uint64_t sid)
{
    if (sid != 0 && sid == x->out.sid) {
        return &x->out;
    }
    if (sid != 0 && sid == x->err.sid) {
        return &x->err;
    }
    return NULL;
}

static void on_exit_notice(struct exec *x, const msgpack_object *params)
{
    struct sbx_err e;

    x->exited = true;
    x->has_exit = sbx_exit_read(params, &x->ex, &e) == 0;
    if (x->cli->json) {
        json_decref(x->exit_json);
        x->exit_json = cli_json_from_msgpack(params);
    }
}

static void on_stream_end(struct exec *x, const msgpack_object *params)
{
    const msgpack_object *eo = sbx_obj_get(params, "error");
    struct sbx_err e;
    uint64_t sid;
    bool truncated = false;
    struct sink *s;

    if (sbx_param_u64(params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &sid, &e) != 0) {
        return;
    }
    s = sink_for(x, sid);
    if (s == NULL) {
        return;
    }
    s->done = true;
    if (eo != NULL && eo->type == MSGPACK_OBJECT_MAP) {
        sbx_err_from_obj(eo, &e);
        say("sbx: exec %s: remote %s: %s (%s)\n", x->what, s->name, e.msg, e.code);
    }
    if (sbx_param_bool(params, "truncated", SBX_OPTIONAL, &truncated, &e) == 0 && truncated &&
        !x->cli->json) {
        say("sbx: exec %s: remote %s cut short: a background process kept it open\n", x->what,
            s->name);
    }
}

static int handle(struct exec *x, const struct sbx_msg *m, struct sbx_err *err)
{
    struct sbx_err e;
    uint64_t v;

    switch (m->kind) {
    case SBX_MSG_DATA: {
        struct sink *s = sink_for(x, m->stream);
        if (s == NULL || s->done) {
            return 0; /* in flight before our cancel, or not ours: discarded */
        }
        return deliver(x, s, m, err);
    }
    case SBX_MSG_NOTIFY:
        if (sbx_msg_method_is(m, SBX_N_STREAM_END)) {
            on_stream_end(x, m->params);
        } else if (sbx_msg_method_is(m, SBX_N_STREAM_CANCEL)) {
            if (sbx_param_u64(m->params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &v, &e) == 0) {
                if (v == x->sin) {
                    x->stdin_open = false; /* the process closed its stdin or is gone */
                } else if (sink_for(x, v) != NULL) {
                    /* The agent gave up on an output stream: nothing more will come on it. */
                    sink_for(x, v)->done = true;
                }
            }
        } else if (sbx_msg_method_is(m, SBX_N_PROC_EXIT)) {
            if (sbx_param_u64(m->params, "id", SBX_REQUIRED, 0, UINT64_MAX, &v, &e) == 0 &&
                v == x->proc) {
                on_exit_notice(x, m->params);
            }
        } else if (sbx_msg_method_is(m, SBX_N_ERROR) && m->params != NULL) {
            sbx_err_from_obj(m->params, &e);
            say_err(x, "agent", &e);
        }
        return 0;
    case SBX_MSG_RESPONSE:
        /* Answers to the proc.kill / proc.resize requests sent for local signals. */
        if (m->error != NULL) {
            sbx_err_from_obj(m->error, &e);
            /* Racing the exit is normal: the process or its group is already gone. */
            if (strcmp(e.code, SBX_E_NOT_FOUND) != 0 && strcmp(e.code, "ESRCH") != 0) {
                say_err(x,
                        x->req[m->id % REQ_SLOTS] == REQ_RESIZE ? "resizing the terminal"
                                                                : "forwarding a signal",
                        &e);
            }
        }
        return 0;
    default:
        return 0;
    }
}

static void on_signal(int sig)
{
    int saved = errno;
    char b = (char)sig;

    if (sig_pty && (sig == SIGTERM || sig == SIGHUP)) {
        /* The main loop hangs up and exits; put the terminal back now in case it is stuck. */
        cli_tty_restore();
        if (++sig_hangups > 1) {
            (void)signal(sig, SIG_DFL);
            (void)raise(sig);
        }
    }
    if (sig_pipe_w >= 0) {
        (void)!write(sig_pipe_w, &b, 1); /* a full pipe already holds enough wake-ups */
    }
    errno = saved;
}

/* Begin @method for the remote process: {id, and two more entries the caller packs}. */
static msgpack_packer *begin_proc3(struct exec *x, const char *method, uint32_t *id)
{
    msgpack_packer *pk = sbx_client_begin(x->c, method, id);

    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "id", x->proc);
    return pk;
}

/* Send proc.kill to the remote group; handle() sees the answer later (@idp: to wait for it). */
static int send_kill(struct exec *x, int sig, uint32_t *idp, struct sbx_err *err)
{
    msgpack_packer *pk;
    uint32_t id;

    pk = begin_proc3(x, SBX_M_PROC_KILL, &id);
    cli_pack_signal(pk, "signal", sig);
    /* Like a terminal: the whole foreground group gets it (a shell and its children). */
    sbx_pack_kv_bool(pk, "group", true);
    x->req[id % REQ_SLOTS] = REQ_KILL;
    if (idp != NULL) {
        *idp = id;
    }
    return sbx_client_send(x->c, err);
}

/* Tell the remote terminal the local window size if it changed. */
static int send_resize(struct exec *x, struct sbx_err *err)
{
    msgpack_packer *pk;
    unsigned rows, cols;
    uint32_t id;

    cli_tty_size(&rows, &cols);
    if (rows == x->rows && cols == x->cols) {
        return 0;
    }
    x->rows = rows;
    x->cols = cols;
    pk = begin_proc3(x, SBX_M_PROC_RESIZE, &id);
    sbx_pack_kv_u64(pk, "rows", rows);
    sbx_pack_kv_u64(pk, "cols", cols);
    x->req[id % REQ_SLOTS] = REQ_RESIZE;
    return sbx_client_send(x->c, err);
}

/*
 * The local side is going away (SIGTERM / SIGHUP, or the terminal closed): restore the
 * terminal, hang up the remote process group as a terminal would (SIGHUP; an interactive shell
 * ignores SIGTERM) and make pump return 1 with 128+@sig.
 */
static int hang_up(struct exec *x, int sig)
{
    struct sbx_msg resp;
    struct sbx_err e;
    uint32_t id;

    cli_tty_restore();
    x->quit_status = 128 + sig;
    if (!x->exited && send_kill(x, SIGHUP, &id, &e) == 0) {
        /* Briefly: the agent has it once it answers; a dead agent must not keep us here. */
        (void)sbx_client_wait(x->c, id, &resp, 2000, &e);
    }
    return 1;
}

/* Act on the signals the self-pipe collected: forward, resize, or hang up. */
static int forward_signals(struct exec *x, int rfd, struct sbx_err *err)
{
    char sigs[16];
    ssize_t n = read(rfd, sigs, sizeof(sigs));
    bool winch = false;

    for (ssize_t i = 0; i < n; i++) {
        switch (sigs[i]) {
        case SIGWINCH:
            winch = true;
            continue;
        case SIGCONT:
            /* Stopped and continued: whoever ran meanwhile may have changed the terminal. */
            if (x->raw && cli_tty_reraw() < 0) {
                say("sbx: exec %s: raw mode: %s\n", x->what, strerror(errno));
            }
            winch = true;
            continue;
        case SIGTERM:
        case SIGHUP:
            if (x->pty) {
                return hang_up(x, sigs[i]);
            }
            break;
        case SIGINT:
            if (++x->sigints >= SIGINT_GIVE_UP) {
                cli_tty_restore();
                say("sbx: exec %s: interrupted %d times, giving up\n", x->what, x->sigints);
                x->quit_status = 128 + SIGINT;
                return 1;
            }
            break;
        default:
            break;
        }
        if (send_kill(x, sigs[i], NULL, err) < 0) {
            return -1;
        }
    }
    if (winch && x->pty && !x->exited) {
        return send_resize(x, err);
    }
    return 0;
}

/*
 * Local input ended (not a terminal): on a PTY send ^D, the terminal's end-of-file for a
 * canonical-mode reader; after an unfinished line the first ^D only delivers the line, so two.
 */
static int pty_eof(struct exec *x, struct sbx_err *err)
{
    static const uint8_t eot[2] = { 0x04, 0x04 };
    uint64_t credit = sbx_client_credit(x->c, x->sin);
    size_t n = x->in_partial ? 2 : 1;

    x->stdin_open = false;
    /* Within the credit, so this never blocks (a remote that stopped reading gets fewer). */
    if (credit < n) {
        n = (size_t)credit;
    }
    if (n > 0 && sbx_client_stream_write(x->c, x->sin, eot, n, err) < 0) {
        if (strcmp(err->code, SBX_E_STREAM) == 0) {
            sbx_err_clear(err);
            return 0;
        }
        return -1;
    }
    return sbx_client_stream_end(x->c, x->sin, err);
}

/* Returns 0, 1 when pump must stop (a hangup), -1 on error. */
static int forward_stdin(struct exec *x, struct sbx_err *err)
{
    static uint8_t buf[64 << 10];
    uint64_t credit = sbx_client_credit(x->c, x->sin);
    size_t want = credit < sizeof(buf) ? (size_t)credit : sizeof(buf);
    ssize_t n;

    if (want == 0) {
        return 0;
    }
    n = read(STDIN_FILENO, buf, want);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return 0;
    }
    if (n <= 0 && x->raw) {
        /* A raw terminal (VMIN 1) reads 0 or EIO only once it is gone. */
        x->stdin_open = false;
        return hang_up(x, SIGHUP);
    }
    if (n < 0) {
        say("sbx: exec %s: reading stdin: %s\n", x->what, strerror(errno));
    }
    if (n <= 0) {
        if (x->pty) {
            return pty_eof(x, err);
        }
        x->stdin_open = false;
        return sbx_client_stream_end(x->c, x->sin, err);
    }
    x->in_partial = buf[n - 1] != '\n' && buf[n - 1] != '\r' && buf[n - 1] != 0x04;
    /* Never more than the credit, so this cannot block waiting for the agent. */
    if (sbx_client_stream_write(x->c, x->sin, buf, (size_t)n, err) < 0) {
        if (strcmp(err->code, SBX_E_STREAM) == 0) {
            x->stdin_open = false; /* cancelled by the agent: the process is done reading */
            sbx_err_clear(err);
            return 0;
        }
        return -1;
    }
    return 0;
}

static bool finished(const struct exec *x)
{
    return x->out.done && x->err.done && x->exited;
}

/* Returns 0 when the process finished, 1 when sbx must quit early (x->quit_status), -1 on
 * error. */
static int pump(struct exec *x, int sig_r, struct sbx_err *err)
{
    while (!finished(x)) {
        struct pollfd pfd[3];
        struct sbx_msg m;
        int r;

        /* Drain what the library already holds before sleeping on the fd. */
        while ((r = sbx_client_recv(x->c, &m, 0, err)) == 1) {
            if (handle(x, &m, err) < 0) {
                return -1;
            }
            if (finished(x)) {
                return 0;
            }
        }
        if (r < 0) {
            return -1;
        }
        pfd[0] = (struct pollfd){ .fd = sbx_client_fd(x->c), .events = POLLIN };
        pfd[1] = (struct pollfd){ .fd = sig_r, .events = POLLIN };
        pfd[2] = (struct pollfd){ .fd = -1 };
        if (x->stdin_open && sbx_client_credit(x->c, x->sin) > 0) {
            pfd[2].fd = STDIN_FILENO;
            pfd[2].events = POLLIN;
        }
        r = poll(pfd, 3, -1);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return sbx_err_sys(err, errno, NULL, "poll");
        }
        if (pfd[1].revents != 0) {
            r = forward_signals(x, sig_r, err);
            if (r != 0) {
                return r;
            }
        }
        if (pfd[2].fd >= 0 && pfd[2].revents != 0) {
            r = forward_stdin(x, err);
            if (r != 0) {
                return r;
            }
        }
    }
    return 0;
}

static int setup_signals(bool pty, int *rfd)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGCONT };
    /* SIGWINCH and SIGCONT only matter for a PTY; elsewhere they keep their defaults. */
    size_t nsigs = sizeof(sigs) / sizeof(sigs[0]) - (pty ? 0 : 2);
    struct sigaction sa;
    int p[2];

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        return -1;
    }
    sig_pipe_w = p[1];
    sig_pty = pty;
    sig_hangups = 0;
    *rfd = p[0];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    (void)sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < nsigs; i++) {
        if (sigaction(sigs[i], &sa, NULL) < 0) {
            return -1;
        }
    }
    return 0;
}

static int exit_status(const struct exec *x)
{
    char buf[32];
    const char *sig;

    if (!x->has_exit) {
        return EXIT_SBX_FAILED;
    }
    if (x->ex.timed_out && !x->cli->json) {
        sig = x->ex.exited ? NULL : sbx_signal_name(x->ex.signo, buf, sizeof(buf));
        (void)fprintf(stderr, "sbx: exec %s: timed out, killed by %s\n", x->what,
                      sig != NULL ? sig : "a signal");
    }
    return sbx_exit_status(&x->ex);
}

static void print_json(const struct exec *x)
{
    json_t *j = json_object();

    /* Key order as documented: exit, stdout, stderr, then the truncation flags. */
    (void)json_object_set(j, "exit", x->exit_json != NULL ? x->exit_json : json_null());
    (void)json_object_set_new(j, "stdout", cli_json_str(x->out.cap, x->out.cap_len));
    (void)json_object_set_new(j, "stderr", cli_json_str(x->err.cap, x->err.cap_len));
    if (x->out.truncated) {
        (void)json_object_set_new(j, "stdout_truncated", json_true());
    }
    if (x->err.truncated) {
        (void)json_object_set_new(j, "stderr_truncated", json_true());
    }
    (void)cli_json_dump(stdout, j);
    (void)fputs("\n", stdout);
    (void)fflush(stdout);
    json_decref(j);
}

static char *join_args(int argc, char **argv)
{
    size_t n = 1;
    char *s, *p;

    for (int i = 0; i < argc; i++) {
        n += strlen(argv[i]) + 1;
    }
    s = malloc(n);
    if (s == NULL) {
        return NULL;
    }
    p = s;
    for (int i = 0; i < argc; i++) {
        size_t k = strlen(argv[i]);
        if (i > 0) {
            *p++ = ' ';
        }
        memcpy(p, argv[i], k);
        p += k;
    }
    *p = '\0';
    return s;
}

static int exec_main(struct cli *cli, int argc, char **argv, enum exec_mode mode)
{
    /* 'T': --timeout (its old short form -t is --tty now, as in docker exec -t). */
#define EXEC_OPTS_COMMON                                                                           \
    { "env", required_argument, NULL, 'e' }, { "cwd", required_argument, NULL, 'w' },              \
        { "user", required_argument, NULL, 'u' }, { "timeout", required_argument, NULL, 'T' },     \
    {                                                                                              \
        "clear-env", no_argument, NULL, 'C'                                                        \
    }
    static const struct option opts[] = {
        EXEC_OPTS_COMMON,
        { "no-stdin", no_argument, NULL, 'n' },
        { "merge", no_argument, NULL, 'm' },
        CLI_OPT_JSON,
        { "tty", no_argument, NULL, 't' },
        CLI_OPTS_END,
    };
    static const struct option shell_opts[] = { EXEC_OPTS_COMMON, CLI_OPTS_END };
    const char *name = mode == MODE_SHELL ? "shell" : mode == MODE_SH ? "sh" : "exec";
    struct exec_opts o = { 0 };
    struct exec x = { 0 };
    struct sbx_err err;
    char *command = NULL;
    char *const *args;
    int opt, status = EXIT_SBX_FAILED, sig_r = -1, r;

    sbx_err_clear(&err);
    o.env = calloc((size_t)argc, sizeof(*o.env));
    if (o.env == NULL) {
        return EXIT_SBX_FAILED;
    }
    o.tty = mode == MODE_SHELL;
    while ((opt = mode == MODE_SHELL ? getopt_long(argc, argv, "+e:w:u:h", shell_opts, NULL)
                                     : getopt_long(argc, argv, "+e:w:u:tnh", opts, NULL)) != -1) {
        switch (opt) {
        case 'e':
            if (optarg[0] == '\0' || optarg[0] == '=') {
                (void)fprintf(stderr, "sbx: %s: bad --env \"%s\": expected NAME=VALUE or NAME\n",
                              argv[0], optarg);
                goto out;
            }
            o.env[o.nenv++] = optarg;
            break;
        case 'w':
            o.cwd = optarg;
            break;
        case 'u':
            o.user = optarg;
            break;
        case 'T':
            if (cli_parse_duration(optarg, &o.timeout_ms) < 0 || o.timeout_ms > UINT32_MAX) {
                (void)fprintf(stderr, "sbx: %s: bad --timeout \"%s\" (e.g. 500ms, 10s, 2m)\n",
                              argv[0], optarg);
                goto out;
            }
            break;
        case 't':
            o.tty = true;
            break;
        case 'n':
            o.no_stdin = true;
            break;
        case 'm':
            o.merge = true;
            break;
        case 'C':
            o.clear_env = true;
            break;
        case 'j':
            cli->json = true;
            break;
        default: /* 'h' prints the help to stdout; a bad option prints it to stderr */
            if (mode == MODE_SHELL) {
                shell_usage(opt == 'h' ? stdout : stderr);
            } else {
                exec_usage(opt == 'h' ? stdout : stderr, mode == MODE_SH);
            }
            status = opt == 'h' ? 0 : status;
            goto out;
        }
    }
    argc -= optind;
    argv += optind;
    args = argv;
    if (argc == 0 && mode == MODE_SHELL) {
        args = default_shell;
        argc = (int)(sizeof(default_shell) / sizeof(default_shell[0])) - 1;
    }
    if (argc == 0) {
        (void)fprintf(stderr, "sbx: %s: missing the command; see 'sbx %s --help'\n", name, name);
        goto out;
    }
    if (mode == MODE_SH) {
        command = join_args(argc, argv);
        if (command == NULL) {
            goto out;
        }
        x.what = command;
    } else {
        x.what = args[0];
    }
    x.cli = cli;
    x.pty = o.tty;
    x.out = (struct sink){ .name = "stdout", .fd = STDOUT_FILENO };
    x.err = (struct sink){ .name = "stderr", .fd = STDERR_FILENO };
    if (x.pty) {
        cli_tty_size(&x.rows, &x.cols);
    }
    x.c = cli_connect(cli);
    if (x.c == NULL) {
        goto out;
    }
    if (spawn(&x, &o, args, command, &err) < 0) {
        status = spawn_failed(&x, &err);
        goto out;
    }
    if (setup_signals(x.pty, &sig_r) < 0) {
        (void)fprintf(stderr, "sbx: exec %s: signal setup: %s\n", x.what, strerror(errno));
        goto out;
    }
    if (x.pty && !o.no_stdin && isatty(STDIN_FILENO)) {
        /* After the handlers: from here on every way out restores the terminal. */
        if (cli_tty_raw(STDIN_FILENO) < 0) {
            (void)fprintf(stderr, "sbx: exec %s: raw mode: %s\n", x.what, strerror(errno));
        } else {
            x.raw = true;
        }
    }
    if (x.pty) {
        /* A resize while spawning reached nobody; tell the remote terminal now. */
        r = send_resize(&x, &err);
        if (r == 0 && x.stdin_open && stdin_is_null()) {
            r = pty_eof(&x, &err); /* /dev/null or closed: input is over before it began */
        }
    } else {
        r = 0;
    }
    if (r == 0) {
        r = pump(&x, sig_r, &err);
    }
    cli_tty_restore();
    if (r < 0) {
        (void)fprintf(stderr, "sbx: exec %s: %s (%s)\n", x.what, err.msg, err.code);
        goto out;
    }
    if (r > 0) {
        status = x.quit_status;
        goto out;
    }
    if (cli->json) {
        print_json(&x);
    }
    status = exit_status(&x);
out:
    cli_tty_forget();
    sbx_client_close(x.c);
    if (sig_r >= 0) {
        int w = sig_pipe_w;
        sig_pipe_w = -1;
        (void)close(sig_r);
        (void)close(w);
    }
    free(x.out.cap);
    free(x.err.cap);
    json_decref(x.exit_json);
    free(command);
    free(o.env);
    return status;
}

int cli_cmd_exec(struct cli *cli, int argc, char **argv)
{
    return exec_main(cli, argc, argv, MODE_EXEC);
}

int cli_cmd_sh(struct cli *cli, int argc, char **argv)
{
    return exec_main(cli, argc, argv, MODE_SH);
}

int cli_cmd_shell(struct cli *cli, int argc, char **argv)
{
    return exec_main(cli, argc, argv, MODE_SHELL);
}
