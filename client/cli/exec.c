/*
 * sbx exec / sbx sh / sbx shell / sbx attach: spawn a process (optionally on a PTY, optionally
 * detached) or attach to a running one, stream its stdio both ways, pass its exit status through.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* Exit statuses for a command the spawn could not run, as shells use them. */
#define EXIT_CANNOT_RUN 126
#define EXIT_NOT_FOUND  127

/* How many local SIGINTs are forwarded before sbx gives up on the agent and exits. */
#define SIGINT_GIVE_UP 3

/* The terminal sbx shell / exec -t hands the process when $TERM is unset or unusable. */
#define DEFAULT_TERM "xterm-256color"

/* sbx attach on a PTY: ^\ followed by ^D detaches (the process keeps running). */
#define DETACH_KEY1 0x1c
#define DETACH_KEY2 0x04

/* What `sbx shell` runs without a command. */
static const char *const default_shell[] = { "/bin/sh", "-l", NULL };

/* The write end of the self-pipe the signal handler reports into (signal-safe global). */
static volatile int sig_pipe_w = -1;
/* PTY mode: SIGTERM and SIGHUP restore the local terminal in the handler already. */
static volatile sig_atomic_t sig_pty;
/*
 * The loop acts on signals between calls into the library, but a write to an agent that takes no
 * bytes waits inside the library for ever: then the handler itself ends sbx. sig_got counts the
 * SIGINT/SIGTERM/SIGHUP/SIGQUIT that arrived (the handler writes it), sig_done those the loop has
 * acted on (only the loop writes it): a SIGTERM, SIGHUP or SIGQUIT that comes while an earlier one
 * still waits for the loop ends sbx with 128+N, and so does the SIGINT_GIVE_UP-th SIGINT whatever
 * the loop does.
 */
static volatile sig_atomic_t sig_got, sig_done, sig_ints;
/* "sbx: exec CMD: interrupted 3 times, giving up", written by the handler. */
static char sig_give_up[600];
static volatile sig_atomic_t sig_give_up_len;

/* The requests sent while streaming, by id % REQ_SLOTS: what they were for, for messages. */
#define REQ_SLOTS 64

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
    const char *verb; /* "exec" or "attach", for messages */
    const char *what; /* the command (exec) or the process id (attach), for messages */
    bool attaching;   /* sbx attach: local signals and the detach keys detach */
    bool held_key1;   /* attach: the last input byte was DETACH_KEY1, not sent yet */
    bool detached;    /* attach: pump returned 1 because the user detached */
    bool taken;       /* another connection took the process over (attach --steal) */
    uint32_t proc, pid;
    uint32_t sin;
    bool stdin_open;
    struct sink out, err;
    bool exited;
    struct sbx_exit ex; /* the proc.exit params */
    json_t *exit_json;  /* --json: the proc.exit params */
    /* PTY mode */
    bool pty;
    bool raw;            /* the local stdin is a terminal we put in raw mode */
    unsigned rows, cols; /* the size the remote terminal has (as far as we told it) */
    bool in_partial;     /* the last input byte sent did not end a line */
    int quit_status;     /* pump returned 1: exit with this */
    const char *req[REQ_SLOTS];
    bool hello_failed;
};

/* What the options and arguments asked for (cli_parse_exec); the --env list lives as long as the
 * process, like argv. */
static struct {
    struct sbx_spawn_params p;
    const char **env;
    size_t nenv;
    bool no_stdin, merge, tty, detach;
    /* sbx attach */
    struct sbx_attach_params ap;
    bool sig_proxy;
    char id[16];
} o;

/* "sbx: exec CMD: <what>: <message> (<code>)". */
static void say_err(const struct exec *x, const char *what, const struct sbx_err *e)
{
    char cmd[512];

    (void)snprintf(cmd, sizeof(cmd), "%s %s: %s", x->verb, x->what, what);
    cli_print_err(cmd, e);
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

    p->has_uid = p->has_gid = false; /* the last --user counts */
    p->user = NULL;
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

static int spawn(struct exec *x, struct sbx_err *err)
{
    struct sbx_pty_params pty = { .rows = x->rows, .cols = x->cols, .term = term_name() };
    struct sbx_spawn_result r;
    struct sbx_msg resp;
    uint32_t id;
    int sent;

    if (o.tty) {
        /* The agent ignores stdin/stdout/stderr here: the PTY is all three. */
        o.p.pty = &pty;
    } else if (o.detach) {
        /* Nobody reads here: a later sbx attach may take stdin and the output over. */
        o.p.stdin_mode = o.no_stdin ? SBX_STDIO_NULL : SBX_STDIO_PIPE;
        o.p.stdout_mode = SBX_STDIO_PIPE;
        o.p.stderr_mode = o.merge ? SBX_STDIO_STDOUT : SBX_STDIO_PIPE;
    } else {
        o.p.stdin_mode = !o.no_stdin && !stdin_is_null() ? SBX_STDIO_PIPE : SBX_STDIO_NULL;
        o.p.stdout_mode = SBX_STDIO_PIPE;
        o.p.stderr_mode = o.merge ? SBX_STDIO_STDOUT : SBX_STDIO_PIPE;
    }
    /* Sent behind the hello main.c did not wait for (§6.1): one round trip instead of two. */
    sent = sbx_client_sent(x->c, sbx_proc_spawn(sbx_client_conn(x->c), &o.p, NULL, &id, err), err);

    if (cli_hello_wait(x->c) < 0) {
        x->hello_failed = true; /* said so already */
        return -1;
    }
    if (sent < 0 || sbx_client_wait(x->c, id, &resp, -1, err) < 0 ||
        sbx_spawn_result_read(resp.result, &r, err) < 0) {
        return -1;
    }
    x->proc = r.id;
    x->pid = r.pid;
    x->sin = r.in;
    x->out.sid = r.out;
    x->err.sid = r.err;
    x->out.done = x->out.sid == 0;
    x->err.done = x->err.sid == 0;
    /* On a PTY the input stream always exists; --no-stdin just never sends anything. */
    x->stdin_open = x->sin != 0 && !o.no_stdin;
    return 0;
}

/* "sbx: exec CMD: <message> (<code>, stage <stage>)" and the matching exit status. */
static int spawn_failed(const struct exec *x, const struct sbx_err *err)
{
    bool exec_stage = err->stage[0] == '\0' || strcmp(err->stage, "exec") == 0;

    if (err->stage[0] != '\0') {
        cli_say("sbx: exec %s: %s (%s, stage %s)\n", x->what, err->msg, err->code, err->stage);
    } else {
        cli_say("sbx: exec %s: %s (%s)\n", x->what, err->msg, err->code);
    }
    /* 127/126 mean "the command" as shells use them; a missing cwd is not a missing command. */
    if (exec_stage && strcmp(err->code, "ENOENT") == 0) {
        return EXIT_NOT_FOUND;
    }
    if (exec_stage && (strcmp(err->code, "EACCES") == 0 || strcmp(err->code, "ENOEXEC") == 0)) {
        return EXIT_CANNOT_RUN;
    }
    return CLI_EXIT_SBX;
}

/* --- attach ------------------------------------------------------------------------------- */

/* "sbx: attach: N bytes of stdout were dropped before offset M" when the replay of stream @sid
 * misses bytes that were asked for (the agent counts from 0 when no offset was). */
static void say_dropped(const char *name, uint32_t sid, uint64_t dropped, uint64_t start)
{
    if (sid != 0 && dropped > 0) {
        cli_say("sbx: attach: %llu bytes of %s were dropped before offset %llu\n",
                (unsigned long long)dropped, name, (unsigned long long)start);
    }
}

/*
 * proc.attach: take over the process's output (replayed from the offsets asked for, then live)
 * and, when there is local input to forward, its stdin. proc.list does not say whether a
 * process runs on a PTY, so --tty does.
 */
static int attach(struct exec *x, struct sbx_err *err)
{
    struct sbx_attach_result r;
    struct sbx_msg resp;
    uint32_t id = 0;
    int sent;

    o.ap.stdin = !o.no_stdin && !stdin_is_null();
    sent =
        sbx_client_sent(x->c, sbx_proc_attach(sbx_client_conn(x->c), &o.ap, NULL, &id, err), err);
    if (cli_hello_wait(x->c) < 0) {
        x->hello_failed = true;
        return -1;
    }
    if (sent < 0 || sbx_client_wait(x->c, id, &resp, -1, err) < 0 ||
        sbx_attach_result_read(resp.result, &r, err) < 0) {
        return -1;
    }
    x->pty = o.tty;
    x->proc = o.ap.id;
    x->sin = r.stdin_sid;
    x->out.sid = r.stdout_sid;
    x->err.sid = r.stderr_sid;
    x->out.done = x->out.sid == 0;
    x->err.done = x->err.sid == 0;
    x->stdin_open = x->sin != 0 && o.ap.stdin;
    say_dropped("stdout", x->out.sid, r.stdout_dropped, r.stdout_start);
    say_dropped("stderr", x->err.sid, r.stderr_dropped, r.stderr_start);
    return 0;
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
        int r = sbx_write_all(s->fd, m->data, m->data_len);
        if (r < 0) {
            /* Our side of this stream is gone: tell the agent and carry on with the rest. */
            if (r != -EPIPE) {
                cli_say("sbx: %s %s: writing remote %s: %s\n", x->verb, x->what, s->name,
                        strerror(-r));
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

/* stream.end or stream.cancel (@method) of one of the process's streams. */
static void on_stream_note(struct exec *x, const char *method, const msgpack_object *params)
{
    struct sbx_stream_note n;
    struct sbx_err e;
    struct sink *s;

    if (sbx_stream_note_read(method, params, &n, &e) < 0) {
        return;
    }
    if ((n.stream == x->sin || sink_for(x, n.stream) != NULL) &&
        strcmp(method, SBX_N_STREAM_CANCEL) == 0 && n.has_error &&
        strcmp(n.error.code, SBX_E_CANCELLED) == 0 && !x->taken) {
        /* Another connection attached with steal (§14.9): no more output, and no proc.exit
         * for us either. */
        x->taken = true;
        cli_say("sbx: %s %s: %s (%s)\n", x->verb, x->what, n.error.msg, n.error.code);
    }
    if (n.stream == x->sin) {
        x->stdin_open = false; /* the process closed its stdin or is gone */
        return;
    }
    s = sink_for(x, n.stream);
    if (s == NULL) {
        return;
    }
    /* Ended, or the agent gave up on it: nothing more will come on it. */
    s->done = true;
    if (strcmp(method, SBX_N_STREAM_END) != 0) {
        return;
    }
    if (n.has_error) {
        cli_say("sbx: %s %s: remote %s: %s (%s)\n", x->verb, x->what, s->name, n.error.msg,
                n.error.code);
    }
    if (n.truncated && !x->cli->json) {
        cli_say("sbx: %s %s: remote %s cut short: a background process kept it open\n", x->verb,
                x->what, s->name);
    }
}

static int handle(struct exec *x, const struct sbx_msg *m, struct sbx_err *err)
{
    struct sbx_exit ex;
    struct sbx_err e;

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
            on_stream_note(x, SBX_N_STREAM_END, m->params);
        } else if (sbx_msg_method_is(m, SBX_N_STREAM_CANCEL)) {
            on_stream_note(x, SBX_N_STREAM_CANCEL, m->params);
        } else if (sbx_msg_method_is(m, SBX_N_PROC_EXIT) &&
                   sbx_exit_read(m->params, &ex, &e) == 0 && ex.id == x->proc) {
            x->exited = true;
            x->ex = ex;
            if (x->cli->json) {
                json_decref(x->exit_json);
                x->exit_json = cli_json_from_msgpack(m->params);
            }
        } else if (sbx_msg_method_is(m, SBX_N_ERROR) && m->params != NULL) {
            sbx_err_from_obj(m->params, &e);
            say_err(x, "agent", &e);
        }
        return 0;
    case SBX_MSG_RESPONSE:
        /* Answers to the requests sent for local signals (send_req). */
        if (m->error != NULL) {
            sbx_err_from_obj(m->error, &e);
            /* Racing the exit is normal: the process or its group is already gone. */
            if (strcmp(e.code, SBX_E_NOT_FOUND) != 0 && strcmp(e.code, "ESRCH") != 0) {
                const char *what = x->req[m->id % REQ_SLOTS];
                say_err(x, what != NULL ? what : "request", &e); /* an id never sent: stray */
            }
        }
        return 0;
    default:
        return 0;
    }
}

/* The signals that ask sbx to end (forwarded, or a hangup or detach), as counted above. */
static bool ending_signal(int sig)
{
    return sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT;
}

/* End sbx from the handler: the terminal restored, nothing else to clean up (output goes out with
 * write(2), the kernel closes the connection). */
static void die_in_handler(int status, const char *msg, size_t len)
{
    cli_tty_restore();
    if (len > 0) {
        (void)!write(STDERR_FILENO, msg, len); /* nothing to do about a failure on the way out */
    }
    _exit(status);
}

static void on_signal(int sig)
{
    int saved = errno;
    char b = (char)sig;

    if (sig_pty && (sig == SIGTERM || sig == SIGHUP)) {
        /* The main loop hangs up and exits; put the terminal back now in case it is stuck. */
        cli_tty_restore();
    }
    if (sig == SIGINT && ++sig_ints >= SIGINT_GIVE_UP) {
        die_in_handler(128 + SIGINT, sig_give_up, (size_t)sig_give_up_len);
    }
    if (ending_signal(sig)) {
        bool stuck = sig_got != sig_done; /* an earlier one still waits for the loop */
        sig_got = sig_got + 1;
        if (stuck && sig != SIGINT) {
            die_in_handler(128 + sig, NULL, 0);
        }
    }
    if (sig_pipe_w >= 0) {
        (void)!write(sig_pipe_w, &b, 1); /* a full pipe already holds enough wake-ups */
    }
    errno = saved;
}

/* Write typed call @r (request *@id, made for @what) without waiting: handle() reports a failure
 * when its answer comes. */
static int send_req(struct exec *x, int r, const uint32_t *id, const char *what,
                    struct sbx_err *err)
{
    if (r == 0) {
        x->req[*id % REQ_SLOTS] = what;
    }
    return sbx_client_sent(x->c, r, err);
}

/* Send @sig to the remote process group, as a terminal does to its foreground group (a shell
 * and its children). */
static int send_kill(struct exec *x, int sig, uint32_t *id, struct sbx_err *err)
{
    return send_req(x, sbx_proc_kill(sbx_client_conn(x->c), x->proc, sig, true, NULL, id, err), id,
                    "forwarding a signal", err);
}

/* Tell the remote terminal the local window size if it changed. */
static int send_resize(struct exec *x, struct sbx_err *err)
{
    unsigned rows, cols;
    uint32_t id;

    cli_tty_size(&rows, &cols);
    if (rows == x->rows && cols == x->cols) {
        return 0;
    }
    x->rows = rows;
    x->cols = cols;
    return send_req(x, sbx_proc_resize(sbx_client_conn(x->c), x->proc, rows, cols, NULL, &id, err),
                    &id, "resizing the terminal", err);
}

/* sbx attach: leave the process running and make pump return 1 with @status. */
static int detach(struct exec *x, int status)
{
    x->detached = true;
    x->quit_status = status;
    return 1;
}

/* sbx attach without --sig-proxy: signals received here detach instead of being forwarded. */
static bool signals_detach(const struct exec *x)
{
    return x->attaching && !o.sig_proxy;
}

/*
 * The local side is going away (SIGTERM / SIGHUP, or the terminal closed): restore the
 * terminal, hang up the remote process group as a terminal would (SIGHUP; an interactive shell
 * ignores SIGTERM) and make pump return 1 with 128+@sig. sbx attach just detaches.
 */
static int hang_up(struct exec *x, int sig)
{
    struct sbx_msg resp;
    struct sbx_err e;
    uint32_t id;

    cli_tty_restore();
    if (signals_detach(x)) {
        return detach(x, 128 + sig);
    }
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
    int ending = 0;
    uint32_t id;

    for (ssize_t i = 0; i < n; i++) {
        ending += ending_signal(sigs[i]);
        if (signals_detach(x) && sigs[i] != SIGWINCH && sigs[i] != SIGCONT) {
            cli_tty_restore();
            return detach(x, 128 + sigs[i]);
        }
        switch (sigs[i]) {
        case SIGWINCH:
            winch = true;
            continue;
        case SIGCONT:
            /* Stopped and continued: whoever ran meanwhile may have changed the terminal. */
            if (x->raw && cli_tty_reraw() < 0) {
                cli_say("sbx: %s %s: raw mode: %s\n", x->verb, x->what, strerror(errno));
            }
            winch = true;
            continue;
        case SIGTERM:
        case SIGHUP:
            if (x->pty) {
                return hang_up(x, sigs[i]);
            }
            break;
        default: /* SIGINT gives up in the handler (on_signal) */
            break;
        }
        if (send_kill(x, sigs[i], &id, err) < 0) {
            return -1;
        }
    }
    sig_done = sig_done + ending; /* only the loop writes it */
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

/*
 * sbx attach on a raw terminal: look for DETACH_KEY1 DETACH_KEY2 in the input just read to
 * buf[1 .. 1+@len). A KEY1 held back from the last read goes in front (buf[0]); a KEY1 that ends
 * the input is held back until the next byte tells. Sets *@off and returns the length of what
 * to send; sets *@found when the sequence came (it and what follows it are not sent).
 */
static size_t detach_keys(struct exec *x, uint8_t *buf, size_t len, size_t *off, bool *found)
{
    size_t start = 1, end = 1 + len;

    if (x->held_key1) {
        buf[0] = DETACH_KEY1;
        start = 0;
        x->held_key1 = false;
    }
    *off = start;
    for (size_t i = start; i < end; i++) {
        if (buf[i] != DETACH_KEY1) {
            continue;
        }
        if (i + 1 == end) {
            x->held_key1 = true;
            return i - start;
        }
        if (buf[i + 1] == DETACH_KEY2) {
            *found = true;
            return i - start;
        }
    }
    return end - start;
}

/* Send @len input bytes (within the credit). 0, or -1 on error. */
static int send_input(struct exec *x, const uint8_t *p, size_t len, struct sbx_err *err)
{
    if (len == 0) {
        return 0;
    }
    x->in_partial = p[len - 1] != '\n' && p[len - 1] != '\r' && p[len - 1] != 0x04;
    /* Never more than the credit, so this cannot block waiting for the agent. */
    if (sbx_client_stream_write(x->c, x->sin, p, len, err) < 0) {
        if (strcmp(err->code, SBX_E_STREAM) == 0) {
            x->stdin_open = false; /* cancelled by the agent: the process is done reading */
            sbx_err_clear(err);
            return 0;
        }
        return -1;
    }
    return 0;
}

/* Returns 0, 1 when pump must stop (a hangup, a detach), -1 on error. */
static int forward_stdin(struct exec *x, struct sbx_err *err)
{
    static uint8_t buf[(64 << 10) + 1]; /* input at buf + 1; buf[0] for a held detach key */
    uint64_t credit = sbx_client_credit(x->c, x->sin);
    size_t want = credit < sizeof(buf) - 1 ? (size_t)credit : sizeof(buf) - 1;
    size_t off = 1, len;
    bool found = false;
    ssize_t n;

    if (x->held_key1 && want == 1) {
        /* No room to wait for the second key within the credit: the first is just input. */
        x->held_key1 = false;
        buf[0] = DETACH_KEY1;
        return send_input(x, buf, want, err);
    }
    if (x->held_key1) {
        want--;
    }
    if (want == 0) {
        return 0;
    }
    n = read(STDIN_FILENO, buf + 1, want);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return 0;
    }
    if (n <= 0 && x->raw) {
        /* A raw terminal (VMIN 1) reads 0 or EIO only once it is gone. */
        x->stdin_open = false;
        return hang_up(x, SIGHUP);
    }
    if (n < 0) {
        cli_say("sbx: %s %s: reading stdin: %s\n", x->verb, x->what, strerror(errno));
    }
    if (n <= 0) {
        if (x->pty) {
            return pty_eof(x, err);
        }
        x->stdin_open = false;
        return sbx_client_stream_end(x->c, x->sin, err);
    }
    len = (size_t)n;
    if (x->attaching && x->raw) {
        len = detach_keys(x, buf, len, &off, &found);
    }
    if (send_input(x, buf + off, len, err) < 0) {
        return -1;
    }
    return found ? detach(x, 0) : 0;
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
            if (x->taken) {
                x->quit_status = CLI_EXIT_SBX;
                return 1;
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
        r = poll(pfd, 3, sbx_client_poll_ms(x->c, -1)); /* 0: the keepalive's turn (recv above) */
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

static int setup_signals(const struct exec *x, int *rfd)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGCONT };
    /* SIGWINCH and SIGCONT only matter for a PTY; elsewhere they keep their defaults. */
    size_t nsigs = sizeof(sigs) / sizeof(sigs[0]) - (x->pty ? 0 : 2);
    struct sigaction sa;
    int p[2], n;

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        return -1;
    }
    sig_pipe_w = p[1];
    sig_pty = x->pty;
    sig_got = sig_done = sig_ints = 0;
    /* Made now: the handler can only write what is ready. */
    n = snprintf(sig_give_up, sizeof(sig_give_up), "sbx: %s %s: interrupted %d times, giving up\n",
                 x->verb, x->what, SIGINT_GIVE_UP);
    sig_give_up_len = n < 0 ? 0 : n < (int)sizeof(sig_give_up) ? n : (int)sizeof(sig_give_up) - 1;
    *rfd = p[0];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    /* One handler at a time: they count in shared variables. */
    (void)sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < nsigs; i++) {
        (void)sigaddset(&sa.sa_mask, sigs[i]); /* cannot fail for a valid signal */
    }
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

    if (x->ex.timed_out && !x->cli->json) {
        sig = x->ex.exited ? NULL : sbx_signal_name(x->ex.signo, buf, sizeof(buf));
        (void)fprintf(stderr, "sbx: %s %s: timed out, killed by %s\n", x->verb, x->what,
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

/* The arguments joined with spaces (sbx sh). */
static char *join_args(int argc, char **argv)
{
    size_t n = 1;
    char *s, *p;

    for (int i = 0; i < argc; i++) {
        n += strlen(argv[i]) + 1;
    }
    s = p = malloc(n);
    for (int i = 0; s != NULL && i < argc; i++) {
        p = stpcpy(p, argv[i]);
        *p++ = ' ';
    }
    if (s != NULL) {
        p[-1] = '\0';
    }
    return s;
}

int cli_parse_exec(struct cli *cli, int opt, const char *arg)
{
    uint64_t ms;
    char *e;

    switch (opt) {
    case 'e':
        if (arg[0] == '\0' || arg[0] == '=') {
            (void)fprintf(stderr, "sbx: %s: bad --env \"%s\": expected NAME=VALUE or NAME\n",
                          cli->cmd, arg);
            return CLI_EXIT_SBX;
        }
        if (strchr(arg, '=') == NULL) {
            /* --env NAME copies NAME from here, when it is set */
            if (getenv(arg) == NULL) {
                return 0;
            }
            if (asprintf(&e, "%s=%s", arg, getenv(arg)) < 0) {
                return CLI_EXIT_SBX;
            }
            arg = e;
        }
        return cli_push(&o.env, &o.nenv, arg) < 0 ? CLI_EXIT_SBX : 0;
    case 'w':
        o.p.cwd = arg;
        return 0;
    case 'u':
        set_user(&o.p, arg);
        return 0;
    case 'T':
        if (cli_parse_duration(arg, &ms) < 0 || ms > UINT32_MAX) {
            (void)fprintf(stderr, "sbx: %s: bad --timeout \"%s\" (e.g. 500ms, 10s, 2m)\n", cli->cmd,
                          arg);
            return CLI_EXIT_SBX;
        }
        o.p.timeout_ms = (uint32_t)ms;
        return 0;
    case 't':
        o.tty = true;
        return 0;
    case 'n':
        o.no_stdin = true;
        return 0;
    case 'm':
        o.merge = true;
        return 0;
    case 'd':
        o.detach = true;
        return 0;
    case 'C':
        o.p.clear_env = true;
        return 0;
    default: /* the options are done: the command */
        break;
    }
    o.p.env = o.env;
    o.p.argv = cli->argc > 0 ? (const char *const *)cli->argv : default_shell;
    if (strcmp(cli->cmd, "shell") == 0) {
        o.tty = true;
    } else if (cli->argc == 0) {
        (void)fprintf(stderr, "sbx: %s: missing the command; see 'sbx %s --help'\n", cli->cmd,
                      cli->cmd);
        return CLI_EXIT_SBX;
    } else if (strcmp(cli->cmd, "sh") == 0) {
        o.p.argv = NULL;
        o.p.command = join_args(cli->argc, cli->argv);
        return o.p.command != NULL ? 0 : CLI_EXIT_SBX;
    }
    return 0;
}

/*
 * Stream the process x->c spawned or attached to until it finished (its output ended and
 * proc.exit came), or sbx must quit early (a hangup, a detach). Returns the exit status.
 */
static int run_streams(struct exec *x, struct sbx_err *err)
{
    int status = CLI_EXIT_SBX, sig_r = -1, r = 0;

    if (setup_signals(x, &sig_r) < 0) {
        (void)fprintf(stderr, "sbx: %s %s: signal setup: %s\n", x->verb, x->what, strerror(errno));
        return CLI_EXIT_SBX;
    }
    if (x->pty && x->stdin_open && isatty(STDIN_FILENO)) {
        /* After the handlers: from here on every way out restores the terminal. */
        if (cli_tty_raw(STDIN_FILENO) < 0) {
            (void)fprintf(stderr, "sbx: %s %s: raw mode: %s\n", x->verb, x->what, strerror(errno));
        } else {
            x->raw = true;
        }
    }
    if (x->pty && (!x->attaching || x->raw)) {
        /* A resize while spawning reached nobody; tell the remote terminal now. An attach
         * without a local terminal leaves the remote size alone. */
        r = send_resize(x, err);
        if (r == 0 && x->stdin_open && stdin_is_null()) {
            r = pty_eof(x, err); /* /dev/null or closed: input is over before it began */
        }
    }
    if (r == 0) {
        r = pump(x, sig_r, err);
    }
    cli_tty_restore();
    if (r < 0) {
        cli_say("sbx: %s %s: %s (%s)\n", x->verb, x->what, err->msg, err->code);
    } else if (r > 0) {
        if (x->detached) {
            (void)fprintf(stderr, "sbx: detached from %u\n", x->proc);
        }
        status = x->quit_status;
    } else {
        if (x->cli->json) {
            print_json(x);
        }
        status = exit_status(x);
    }
    cli_tty_forget();
    {
        int w = sig_pipe_w;
        sig_pipe_w = -1;
        (void)close(sig_r);
        (void)close(w);
    }
    return status;
}

/* exec --detach: the process is running; say which it is and leave it. */
static int print_detached(const struct exec *x)
{
    if (x->cli->json) {
        (void)printf("{\"id\":%u,\"pid\":%u}\n", x->proc, x->pid);
    } else {
        (void)printf("%u\n", x->proc);
    }
    return fflush(stdout) == 0 ? 0 : CLI_EXIT_SBX;
}

int cli_cmd_exec(struct cli *cli, struct sbx_client *c)
{
    struct exec x = {
        .cli = cli,
        .c = c,
        .verb = "exec",
        .what = o.p.command != NULL ? o.p.command : o.p.argv[0],
        .pty = o.tty,
        .out = { .name = "stdout", .fd = STDOUT_FILENO },
        .err = { .name = "stderr", .fd = STDERR_FILENO },
    };
    struct sbx_err err;
    int status;

    sbx_err_clear(&err);
    if (x.pty) {
        cli_tty_size(&x.rows, &x.cols);
    }
    if (spawn(&x, &err) < 0) {
        status = x.hello_failed ? CLI_EXIT_SBX : spawn_failed(&x, &err);
    } else if (o.detach) {
        status = print_detached(&x);
    } else {
        status = run_streams(&x, &err);
    }
    free(x.out.cap);
    free(x.err.cap);
    json_decref(x.exit_json);
    return status;
}

int cli_parse_attach(struct cli *cli, int opt, const char *arg)
{
    uint64_t v;

    switch (opt) {
    case 'F':
    case 'E':
        if (cli_parse_u64(arg, &v) < 0) {
            (void)fprintf(stderr, "sbx: attach: bad --%s \"%s\": expected a byte offset\n",
                          opt == 'F' ? "from" : "stderr-from", arg);
            return CLI_EXIT_SBX;
        }
        if (opt == 'F') {
            o.ap.has_from = true;
            o.ap.from = v;
        } else {
            o.ap.has_stderr_from = true;
            o.ap.stderr_from = v;
        }
        return 0;
    case 'S':
        o.ap.steal = true;
        return 0;
    case 'n':
        o.no_stdin = true;
        return 0;
    case 't':
        o.tty = true;
        return 0;
    case 'P':
        o.sig_proxy = true;
        return 0;
    default: /* the options are done: the process id */
        break;
    }
    if (cli->argc != 1 || cli_parse_u64(cli->argv[0], &v) < 0 || v == 0 || v > UINT32_MAX) {
        return CLI_OPTS_BAD;
    }
    o.ap.id = (uint32_t)v;
    (void)snprintf(o.id, sizeof(o.id), "%u", o.ap.id);
    return 0;
}

int cli_cmd_attach(struct cli *cli, struct sbx_client *c)
{
    struct exec x = {
        .cli = cli,
        .c = c,
        .verb = "attach",
        .what = o.id,
        .attaching = true,
        .out = { .name = "stdout", .fd = STDOUT_FILENO },
        .err = { .name = "stderr", .fd = STDERR_FILENO },
    };
    struct sbx_err err;
    int status;

    sbx_err_clear(&err);
    if (attach(&x, &err) < 0) {
        if (!x.hello_failed) {
            say_err(&x, "proc.attach", &err);
        }
        status = CLI_EXIT_SBX;
    } else {
        status = run_streams(&x, &err);
    }
    free(x.out.cap);
    free(x.err.cap);
    json_decref(x.exit_json);
    return status;
}
