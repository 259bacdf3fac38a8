/*
 * REPL sessions (PROTOCOL.md section 16): a long-lived interpreter whose state persists between
 * evaluations, driven by a small language driver so that results come back structured.
 *
 * The interpreter is an ordinary agent process (tag "repl:<id>", counted in max_procs, listed by
 * proc.list). Its stdin and controlling terminal is a PTY, so isatty(0) holds and a timeout
 * interrupts it exactly as ^C would (SIGINT to the terminal's foreground group); its stdout and
 * stderr are separate pipes; and two more pipes carry control data, never mixed with user output:
 *
 *   fd 3 (agent -> driver): code. python3/node/deno: "<length>\n<code>" (deno, repl.eval format
 *        "json": "<length> json\n<code>", the value reported as JSON); sh/bash: the driver
 *        prologue first, then per eval __sbx_c='<code, ' written as '\''>' and shell_eval_tail
 *   fd 4 (driver -> agent): ASCII header lines, at most SBX_REPL_CTL_LINE_MAX bytes:
 *        "ready"                     the driver is up (once, after start)
 *        "result V E" + V + E bytes  python3/node/deno: value (V = -1: none), error text
 *                                    (E = -1: none)
 *        "status N"                  sh/bash: the exit status of the code
 *        "pong N"                    sh/bash: the shell is back at its prompt after interrupt N
 *
 * The drivers are source files in agent/repl/ (driver.py, driver.js, driver_deno.mjs,
 * prologue.sh), compiled into the agent as strings (repl/drivers.h).
 *
 * An eval is finished when its report arrives; the driver flushes stdout/stderr before reporting,
 * so a final non-blocking drain of both pipes collects everything the code wrote. A streaming
 * eval's drain stops at its streams' credit: what the pipes hold then is counted (FIONREAD) and
 * still goes out on its streams, as credit comes, before they end (eval_output_waits).
 */
#include "repl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "env.h"
#include "proc.h"
#include "repl/drivers.h"
#include "sbx/schema.h"
#include "stream.h"
#include "strv.h"

enum repl_lang { LANG_SH, LANG_BASH, LANG_PYTHON, LANG_NODE, LANG_DENO };
static const char *const lang_names[] = { "sh", "bash", "python3", "node", "deno" };

enum repl_state { RS_STARTING, RS_IDLE, RS_BUSY, RS_ENDED };
enum repl_timer { RT_START, RT_EVAL, RT_INTR, RT_CLOSE };

/* A capture buffer with a cap: bytes past the cap are dropped and remembered as truncation. */
struct repl_buf {
    uint8_t *data;
    uint32_t len, cap;
    bool truncated;
};

struct agent_repl {
    struct agent_link link; /* in a->repls while the session is live */
    struct agent *a;
    uint32_t id;
    enum repl_lang lang;
    enum repl_state state;
    bool linked;
    struct agent_proc *proc; /* NULL once the interpreter's exit was reported */
    pid_t pid;
    uint32_t proc_id; /* the interpreter's agent process id (proc.* methods) */
    uint64_t started_wall_ns;
    uint32_t evals;
    bool ev_cut;    /* a streaming eval: output from before it was not all sent (truncated) */
    uv_pipe_t code; /* agent -> driver (fd 3) */
    uv_pipe_t ctl;  /* driver -> agent (fd 4) */
    uv_pipe_t tty;  /* the PTY master: kept open, read and discarded */
    int code_fd, ctl_fd, master; /* their fds while the interpreter starts (repl_started) */
    uv_timer_t timer;
    enum repl_timer timer_kind;
    bool code_open, ctl_open, tty_open, timer_open;
    unsigned handles;
    /* the pending repl.start */
    struct agent_conn_ref start_ref; /* start_ref.conn: who waits for repl.start's answer */
    uint32_t start_id;
    /* the running eval */
    struct agent_conn_ref ev_ref; /* ev_ref.conn: NULL once the requester went away: the result
                                   * is dropped */
    uint32_t ev_id;
    bool ev_stream, ev_timed_out;
    bool ev_draining; /* a streaming eval reported; its pipes' last bytes wait for credit */
    uint64_t ev_start_ns, ev_timeout_ns;
    uint32_t intr; /* interrupts sent; a shell's "pong N" answers interrupt N */
    /* output captured between evals and during a non-streaming eval */
    struct repl_buf out[2];
    /* the driver report being read */
    char line[SBX_REPL_CTL_LINE_MAX];
    uint32_t line_len;
    bool in_payload;
    bool in_payload_drop; /* ... of a report that came while the eval drained: dropped */
    uint64_t need[2];     /* value, error bytes still to come */
    bool has_value, has_error;
    struct repl_buf value, error;
    int status; /* sh/bash: exit status of the code */
    /* The result of the last eval whose requester was gone before it finished, packed as
     * repl.collect returns it (§16.7); kept until collected or the next eval starts. */
    msgpack_sbuffer unclaimed;
    uint32_t unclaimed_eval; /* its eval number; 0: none */
};

/* --- drivers ------------------------------------------------------------------------------ */

/* The python3, node and deno drivers and the shell prologue are files in agent/repl/, embedded
 * at build time (repl/drivers.h). The shell's per-eval tail stays here, with code_frame, which
 * writes the quoted code it ends. */

/* What follows "__sbx_c='<code>" for each eval. The code must run at the shell's top level, not
 * in a function: there bash's declare/typeset would make locals and set -- would not last. It is
 * sourced (`.`) from a one-line script in a here-document, so that a `return` in the code, and
 * bash's INT trap, end the eval and not the shell; `command` keeps a syntax or special-builtin
 * error from ending the shell. The code runs with fds 3 and 4 closed. */
static const char shell_eval_tail[] =
    "'; command . /proc/self/fd/3 3<<'__sbx_end' 4>&-; printf 'status %d\\n' \"$?\" >&4\n"
    "command eval \"$__sbx_c\" 3<&-\n"
    "__sbx_end\n";

/* --- buffers ------------------------------------------------------------------------------ */

static void buf_append(struct repl_buf *b, const void *data, size_t n, uint32_t cap)
{
    if (n > cap - b->len) {
        n = cap - b->len;
        b->truncated = true;
    }
    if (n == 0) {
        return;
    }
    if (b->len + n > b->cap) {
        uint32_t ncap = b->cap ? b->cap : 4096;
        uint8_t *d;
        while (ncap < b->len + n) {
            ncap = ncap > cap / 2 ? cap : ncap * 2;
        }
        d = realloc(b->data, ncap);
        if (d == NULL) {
            b->truncated = true;
            return;
        }
        b->data = d;
        b->cap = ncap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += (uint32_t)n;
}

/* The bytes of @b; never NULL, even when empty (msgpack copies from it). */
static const char *buf_bytes(const struct repl_buf *b)
{
    return b->data != NULL ? (const char *)b->data : "";
}

static void buf_reset(struct repl_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Length of @b cut back to a UTF-8 character boundary when truncation split a character. */
static uint32_t buf_text_len(const struct repl_buf *b)
{
    uint32_t n = b->len, k = 0;

    if (!b->truncated) {
        return n;
    }
    while (k < 3 && n > k && (b->data[n - 1 - k] & 0xc0) == 0x80) {
        k++;
    }
    if (n > k && b->data[n - 1 - k] >= 0xc0) {
        unsigned lead = b->data[n - 1 - k];
        unsigned want = lead >= 0xf0 ? 3 : lead >= 0xe0 ? 2 : 1;
        if (k < want) {
            return n - 1 - k;
        }
    }
    return n;
}

/* --- the session object ------------------------------------------------------------------- */

static void repl_free_maybe(struct agent_repl *r)
{
    if (r->proc != NULL || r->handles > 0) {
        return;
    }
    buf_reset(&r->out[0]);
    buf_reset(&r->out[1]);
    buf_reset(&r->value);
    buf_reset(&r->error);
    msgpack_sbuffer_destroy(&r->unclaimed);
    free(r);
}

/* Forget the unclaimed result, if any. */
static void unclaimed_drop(struct agent_repl *r)
{
    msgpack_sbuffer_destroy(&r->unclaimed);
    msgpack_sbuffer_init(&r->unclaimed);
    r->unclaimed_eval = 0;
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct agent_repl *r = h->data;

    r->handles--;
    repl_free_maybe(r);
}

static void close_handle(struct agent_repl *r, uv_handle_t *h, bool *open)
{
    if (*open) {
        *open = false;
        uv_close(h, handle_closed_cb);
    }
}

static struct agent_repl *repl_find(struct agent *a, const msgpack_object *params,
                                    struct sbx_err *err)
{
    struct agent_link *l;
    uint64_t id;

    if (sbx_param_u64(params, "session", SBX_REQUIRED, 0, UINT32_MAX, &id, err) != 0) {
        return NULL;
    }
    for (l = a->repls.next; l != &a->repls; l = l->next) {
        struct agent_repl *r = agent_container_of(l, struct agent_repl, link);
        if (r->id == id) {
            return r;
        }
    }
    sbx_err_set(err, SBX_E_NOT_FOUND, "no REPL session %llu", (unsigned long long)id);
    return NULL;
}

static void timer_start(struct agent_repl *r, enum repl_timer kind, uint64_t ms);

/* A requester's connection closed: its answer is dropped (ref.conn is NULL); the start or the
 * eval runs to completion. */
static void repl_ref_gone(struct agent_conn_ref *r)
{
    (void)r;
}

/* The session is over for its clients (NOT_FOUND from now on). The object lives on until the
 * interpreter's exit is reported and its handles have closed. */
static void repl_end(struct agent_repl *r)
{
    r->state = RS_ENDED;
    agent_conn_ref_del(&r->start_ref);
    agent_conn_ref_del(&r->ev_ref);
    if (r->linked) {
        agent_list_del(&r->link);
        r->linked = false;
    }
    /* EOF on its code pipe ends every driver; closing the master hangs the terminal up. */
    close_handle(r, (uv_handle_t *)&r->code, &r->code_open);
    close_handle(r, (uv_handle_t *)&r->ctl, &r->ctl_open);
    close_handle(r, (uv_handle_t *)&r->tty, &r->tty_open);
}

/* Signal the interpreter's process group (and the terminal's foreground group, where a shell
 * with job control would have put a job). */
static void repl_signal(struct agent_repl *r, int sig)
{
    uv_os_fd_t fd;

    if (r->proc == NULL || agent_proc_exited(r->proc)) {
        return;
    }
    if (r->tty_open && uv_fileno((uv_handle_t *)&r->tty, &fd) == 0) {
        pid_t fg = tcgetpgrp(fd);
        /* Through the terminal, not by number: the terminal keeps naming a foreground group
         * that has died, whose number the kernel may have given to another process (a root
         * one), and TIOCSIG reaches only the group the terminal holds. */
        if (fg > 0 && fg != r->pid) {
            (void)ioctl(fd, TIOCSIG, sig); /* nothing left in it: nothing happens */
        }
    }
    (void)kill(-r->pid, sig);
}

/* --- writing code to the driver ----------------------------------------------------------- */

struct code_req {
    uv_write_t req;
    char data[];
};

static void code_write_cb(uv_write_t *req, int status)
{
    /* A failure means the driver is gone; its exit is reported through the process. */
    (void)status;
    free(agent_container_of(req, struct code_req, req));
}

static int code_send(struct agent_repl *r, const char *data, size_t n)
{
    struct code_req *q;
    uv_buf_t b;

    if (!r->code_open) {
        return UV_EPIPE;
    }
    q = malloc(sizeof(*q) + n);
    if (q == NULL) {
        return UV_ENOMEM;
    }
    memcpy(q->data, data, n);
    b = uv_buf_init(q->data, (unsigned)n);
    if (uv_write(&q->req, (uv_stream_t *)&r->code, &b, 1, code_write_cb) < 0) {
        free(q);
        return UV_EPIPE;
    }
    return 0;
}

/* Frame @code for the driver: a shell gets it assigned single-quoted, then shell_eval_tail. */
static int code_frame(struct agent_repl *r, const char *code, size_t n, bool json)
{
    char *msg, *p;
    size_t quotes = 0;
    int rc;

    if (r->lang != LANG_SH && r->lang != LANG_BASH) {
        /* "<length>\n", or "<length> json\n" for a deno eval with format "json". */
        char head[32];
        int hn = snprintf(head, sizeof(head), json ? "%zu json\n" : "%zu\n", n);
        msg = malloc((size_t)hn + n);
        if (msg == NULL) {
            return UV_ENOMEM;
        }
        memcpy(msg, head, (size_t)hn);
        memcpy(msg + hn, code, n);
        rc = code_send(r, msg, (size_t)hn + n);
        free(msg);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        quotes += code[i] == '\'';
    }
    msg = malloc(n + quotes * 3 + 16 + sizeof(shell_eval_tail));
    if (msg == NULL) {
        return UV_ENOMEM;
    }
    p = msg;
    p += sprintf(p, "__sbx_c='");
    for (size_t i = 0; i < n; i++) {
        if (code[i] == '\'') {
            memcpy(p, "'\\''", 4);
            p += 4;
        } else {
            *p++ = code[i];
        }
    }
    memcpy(p, shell_eval_tail, sizeof(shell_eval_tail) - 1);
    p += sizeof(shell_eval_tail) - 1;
    rc = code_send(r, msg, (size_t)(p - msg));
    free(msg);
    return rc;
}

/* The interpreter's output is read at the pace of detached output between evals (@idle), at
 * once during one (agent/stream.c, pipe_paced). */
static void repl_pace(struct agent_repl *r, bool idle)
{
    if (r->proc == NULL) {
        return;
    }
    r->proc->out.sink_idle = r->proc->err.sink_idle = idle;
    if (!idle) {
        agent_pipe_update(&r->proc->out); /* reading again now if the pace had stopped it */
        agent_pipe_update(&r->proc->err);
    }
}

/* --- finishing an eval -------------------------------------------------------------------- */

/* Collect what the code wrote before its report: the driver flushed, so it is in the pipes. */
static void drain_output(struct agent_repl *r)
{
    if (r->proc == NULL) {
        return;
    }
    if (r->proc->out.open && !r->proc->out.eof) {
        (void)agent_pipe_final_drain(&r->proc->out);
    }
    if (r->proc->err.open && !r->proc->err.eof) {
        (void)agent_pipe_final_drain(&r->proc->err);
    }
}

/* The result fields shared by the eval response and repl.result. */
static void pack_result_fields(msgpack_packer *pk, struct agent_repl *r, const char *exit_text)
{
    bool error, truncated = r->value.truncated || r->error.truncated;
    const char *text = NULL;
    char tbuf[64], vbuf[32];

    if (r->ev_timed_out) {
        error = true;
        text = "timeout";
    } else if (exit_text != NULL) {
        error = true;
        text = exit_text;
    } else if (r->lang == LANG_SH || r->lang == LANG_BASH) {
        error = r->status != 0;
        if (error) {
            snprintf(tbuf, sizeof(tbuf), "exit status %d", r->status);
            text = tbuf;
        }
    } else {
        error = r->has_error;
    }
    if (!r->ev_stream) {
        truncated = truncated || r->out[0].truncated || r->out[1].truncated;
    } else {
        truncated = truncated || r->ev_cut;
    }
    sbx_pack_cstr(pk, "value");
    if (r->lang == LANG_SH || r->lang == LANG_BASH) {
        if (exit_text == NULL) {
            snprintf(vbuf, sizeof(vbuf), "%d", r->status);
            sbx_pack_cstr(pk, vbuf);
        } else {
            msgpack_pack_nil(pk);
        }
    } else if (r->has_value && exit_text == NULL) {
        sbx_pack_bstr(pk, buf_bytes(&r->value), buf_text_len(&r->value));
    } else {
        msgpack_pack_nil(pk);
    }
    sbx_pack_kv_bool(pk, "error", error);
    sbx_pack_cstr(pk, "error_text");
    if (text != NULL) {
        sbx_pack_cstr(pk, text);
    } else if (error && r->has_error) {
        sbx_pack_bstr(pk, buf_bytes(&r->error), buf_text_len(&r->error));
    } else {
        msgpack_pack_nil(pk);
    }
    sbx_pack_kv_u64(pk, "duration_ns", agent_now_ns() - r->ev_start_ns);
    sbx_pack_kv_bool(pk, "timed_out", r->ev_timed_out);
    sbx_pack_kv_bool(pk, "truncated", truncated);
}

/* Lift the bounds a draining eval set on its pipes (it ended, or ends another way): what the
 * interpreter wrote after its report is read again, as the next eval's. */
static void eval_output_forget(struct agent_repl *r)
{
    if (r->ev_draining && r->proc != NULL) {
        struct agent_pipe *pipes[2] = { &r->proc->out, &r->proc->err };

        for (int i = 0; i < 2; i++) {
            pipes[i]->bounded = false;
            pipes[i]->until_cb = NULL;
            agent_pipe_update(pipes[i]);
        }
    }
    r->ev_draining = false;
}

static void eval_complete(struct agent_repl *r, const char *exit_text);

/* A pipe of a draining eval reached its bound: once both did, the eval ends. */
static void eval_output_done(struct agent_pipe *p)
{
    struct agent_repl *r = p->proc->data;

    if (r == NULL || !r->ev_draining || r->proc == NULL || r->proc->out.until_cb != NULL ||
        r->proc->err.until_cb != NULL) {
        return;
    }
    eval_complete(r, NULL);
}

/* A streaming eval reported while its pipes still hold output it wrote before (what its streams
 * had no credit for): those bytes are this eval's, not the next one's. Both pipes are bounded at
 * what they hold now: each is read up to there, as credit comes, and no further (what the
 * interpreter writes after its report waits in the pipe for the next eval); the eval ends once
 * both got there (eval_output_done). False, with no bound set, when nothing waits. */
static bool eval_output_waits(struct agent_repl *r)
{
    struct agent_pipe *pipes[2] = { &r->proc->out, &r->proc->err };
    bool waits = false;

    for (int i = 0; i < 2; i++) {
        struct agent_pipe *p = pipes[i];
        uint64_t n = p->eof ? 0 : agent_pipe_unread(p);

        if (n > 0 || p->lead != NULL) { /* (the lead: what came before the eval, still unsent) */
            p->until_cb = eval_output_done;
            waits = true;
        }
        p->bounded = true;
        p->until = p->total + n;
    }
    if (!waits) {
        pipes[0]->bounded = pipes[1]->bounded = false;
    }
    r->ev_draining = waits;
    return waits;
}

/* The eval is over (driver report, interpreter exit, or kill after a timeout): answer it, or,
 * for a streaming eval whose last output waits for credit, once that went out. */
static void eval_finish(struct agent_repl *r, const char *exit_text)
{
    if (r->timer_open) {
        uv_timer_stop(&r->timer);
    }
    if (r->ev_draining) {
        if (exit_text == NULL) {
            return; /* a second report from the driver: the first one stands */
        }
        eval_output_forget(r); /* the interpreter is gone: its pipes were read to the end */
    } else {
        drain_output(r);
        if (r->ev_stream && exit_text == NULL && r->proc != NULL && eval_output_waits(r)) {
            return;
        }
    }
    eval_complete(r, exit_text);
}

static void eval_complete(struct agent_repl *r, const char *exit_text)
{
    struct agent_conn *c = r->ev_ref.conn;

    if (r->ev_stream) {
        /* Both streams end, then repl.result: the last frame of this eval. */
        if (r->proc != NULL && r->proc->out.stream != NULL) {
            agent_stream_end(r->proc->out.stream, NULL, false);
        }
        if (r->proc != NULL && r->proc->err.stream != NULL) {
            agent_stream_end(r->proc->err.stream, NULL, false);
        }
        if (c != NULL) {
            msgpack_packer *pk = agent_conn_begin(c);
            sbx_pack_notify_head(pk, "repl.result");
            msgpack_pack_map(pk, 8);
            sbx_pack_kv_u64(pk, "session", r->id);
            sbx_pack_kv_u64(pk, "eval", r->evals);
            pack_result_fields(pk, r, exit_text);
            agent_conn_send(c);
        }
    } else if (c != NULL) {
        msgpack_packer *pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, r->ev_id);
        msgpack_pack_map(pk, 8);
        sbx_pack_cstr(pk, "stdout");
        sbx_pack_bin(pk, buf_bytes(&r->out[0]), r->out[0].len);
        sbx_pack_cstr(pk, "stderr");
        sbx_pack_bin(pk, buf_bytes(&r->out[1]), r->out[1].len);
        pack_result_fields(pk, r, exit_text);
        agent_conn_send_result(c); /* up to 3 MiB: a peer slow to read it must not lose it */
    }
    if (c == NULL) {
        /* Nobody is left to tell: keep the result for repl.collect (§16.7). A streaming eval's
         * output went to streams that are gone with their connection. */
        msgpack_packer pk;
        unclaimed_drop(r);
        msgpack_packer_init(&pk, &r->unclaimed, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 10);
        sbx_pack_kv_u64(&pk, "session", r->id);
        sbx_pack_kv_u64(&pk, "eval", r->evals);
        sbx_pack_cstr(&pk, "stdout");
        sbx_pack_bin(&pk, buf_bytes(&r->out[0]), r->ev_stream ? 0 : r->out[0].len);
        sbx_pack_cstr(&pk, "stderr");
        sbx_pack_bin(&pk, buf_bytes(&r->out[1]), r->ev_stream ? 0 : r->out[1].len);
        pack_result_fields(&pk, r, exit_text);
        r->unclaimed_eval = r->evals;
    }
    if (!r->ev_stream) {
        buf_reset(&r->out[0]);
        buf_reset(&r->out[1]);
    }
    buf_reset(&r->value);
    buf_reset(&r->error);
    r->has_value = r->has_error = false;
    agent_conn_ref_del(&r->ev_ref);
    r->ev_stream = false;
    r->ev_timed_out = false;
    if (r->state == RS_BUSY) {
        r->state = RS_IDLE;
        repl_pace(r, true);
    }
    eval_output_forget(r); /* last: what comes after the report goes to the idle capture */
}

/* The pending repl.start fails with @err (an async completion: start-up failure, start timeout,
 * repl.close); nothing is sent when its connection went away. */
static void start_fail(struct agent_repl *r, const struct sbx_err *err)
{
    if (r->start_ref.conn != NULL) {
        agent_conn_reply_error(r->start_ref.conn, r->start_id, err);
        agent_conn_ref_del(&r->start_ref);
    }
}

/* A running eval ends without a result: CANCELLED (repl.close). */
static void eval_cancel(struct agent_repl *r)
{
    struct sbx_err err;

    sbx_err_set(&err, SBX_E_CANCELLED, "REPL session %u was closed", r->id);
    eval_output_forget(r);
    if (r->ev_stream) {
        if (r->proc != NULL && r->proc->out.stream != NULL) {
            agent_stream_end(r->proc->out.stream, &err, false);
        }
        if (r->proc != NULL && r->proc->err.stream != NULL) {
            agent_stream_end(r->proc->err.stream, &err, false);
        }
    } else if (r->ev_ref.conn != NULL) {
        agent_conn_reply_error(r->ev_ref.conn, r->ev_id, &err);
    }
    agent_conn_ref_del(&r->ev_ref);
    r->ev_stream = false;
}

/* --- driver reports ----------------------------------------------------------------------- */

static void on_ready(struct agent_repl *r)
{
    msgpack_packer *pk;

    if (r->state != RS_STARTING) {
        return;
    }
    uv_timer_stop(&r->timer);
    /* Whatever the interpreter printed while starting (a banner, a first prompt) is noise. */
    drain_output(r);
    buf_reset(&r->out[0]);
    buf_reset(&r->out[1]);
    r->state = RS_IDLE;
    repl_pace(r, true);
    if (r->start_ref.conn != NULL) {
        pk = agent_conn_begin(r->start_ref.conn);
        sbx_pack_response_head(pk, r->start_id);
        msgpack_pack_map(pk, 3);
        sbx_pack_kv_u64(pk, "session", r->id);
        sbx_pack_kv_i64(pk, "pid", r->pid);
        sbx_pack_kv_u64(pk, "proc", r->proc_id);
        agent_conn_send(r->start_ref.conn);
        agent_conn_ref_del(&r->start_ref);
    }
}

/* A driver that breaks the control protocol cannot be trusted with more code. */
static void driver_broken(struct agent_repl *r)
{
    agent_log("REPL session %u: malformed driver report; killing the interpreter", r->id);
    close_handle(r, (uv_handle_t *)&r->ctl, &r->ctl_open);
    repl_signal(r, SIGKILL);
}

static void on_line(struct agent_repl *r)
{
    long long v = 0, e = 0;
    int n, st;

    r->line[r->line_len] = '\0';
    if (strcmp(r->line, "ready") == 0) {
        on_ready(r);
    } else if (sscanf(r->line, "status %d%n", &st, &n) == 1 && r->line[n] == '\0') {
        if (r->state == RS_BUSY && !r->ev_draining) {
            r->status = st;
            eval_finish(r, NULL);
        }
    } else if (sscanf(r->line, "pong %lld%n", &v, &n) == 1 && r->line[n] == '\0') {
        /* Only the answer to the current eval's interrupt counts. One whose eval already
         * reported its status (bash returns from it; or the code ended as the interrupt came)
         * is stale, and must not end the next eval. */
        if (r->state == RS_BUSY && !r->ev_draining && r->ev_timed_out && v == (long long)r->intr) {
            r->status = 130;
            eval_finish(r, NULL);
        }
    } else if (sscanf(r->line, "result %lld %lld%n", &v, &e, &n) == 2 && r->line[n] == '\0' &&
               v >= -1 && e >= -1 && v < (1ll << 40) && e < (1ll << 40)) {
        /* A report while the eval's last output drains is one too many: its payload is read
         * and dropped, the first report stands. */
        r->in_payload_drop = r->ev_draining;
        if (!r->in_payload_drop) {
            r->has_value = v >= 0;
            r->has_error = e >= 0;
        }
        r->need[0] = v > 0 ? (uint64_t)v : 0;
        r->need[1] = e > 0 ? (uint64_t)e : 0;
        r->in_payload = true;
    } else {
        driver_broken(r);
    }
}

static void on_result(struct agent_repl *r)
{
    r->in_payload = false;
    if (r->in_payload_drop) {
        r->in_payload_drop = false;
    } else if (r->state == RS_BUSY) {
        eval_finish(r, NULL);
    } else {
        buf_reset(&r->value);
        buf_reset(&r->error);
    }
}

static void ctl_feed(struct agent_repl *r, const uint8_t *d, size_t n)
{
    while (n > 0 && r->ctl_open) {
        if (r->in_payload) {
            int i = r->need[0] > 0 ? 0 : 1;
            size_t take = n < r->need[i] ? n : (size_t)r->need[i];
            if (!r->in_payload_drop) {
                buf_append(i == 0 ? &r->value : &r->error, d, take,
                           i == 0 ? SBX_REPL_VALUE_MAX : SBX_REPL_ERROR_MAX);
            }
            r->need[i] -= take;
            d += take;
            n -= take;
            if (r->need[0] == 0 && r->need[1] == 0) {
                on_result(r);
            }
            continue;
        }
        if (*d == '\n') {
            on_line(r);
            r->line_len = 0;
            if (r->in_payload && r->need[0] == 0 && r->need[1] == 0) {
                on_result(r);
            }
        } else if (r->line_len + 1 >= sizeof(r->line)) {
            driver_broken(r);
            return;
        } else {
            r->line[r->line_len++] = (char)*d;
        }
        d++;
        n--;
    }
}

static void ctl_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct agent_repl *r = h->data;

    (void)suggested;
    buf->base = agent_buf_get(r->a);
    buf->len = buf->base != NULL ? SBX_STREAM_CHUNK_MAX : 0;
}

static void ctl_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct agent_repl *r = s->data;

    if (nread > 0) {
        ctl_feed(r, (const uint8_t *)buf->base, (size_t)nread);
    }
    if (buf->base != NULL) {
        agent_buf_put(r->a, buf->base);
    }
    if (nread < 0) {
        /* The driver is gone or closed fd 4: the process exit reports the rest. */
        close_handle(r, (uv_handle_t *)&r->ctl, &r->ctl_open);
    }
}

static void tty_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct agent_repl *r = s->data;

    /* Output to the terminal itself (/dev/tty) is not the code's stdout: discarded. */
    if (buf->base != NULL) {
        agent_buf_put(r->a, buf->base);
    }
    if (nread < 0) {
        close_handle(r, (uv_handle_t *)&r->tty, &r->tty_open);
    }
}

/* --- output capture and the interpreter's end --------------------------------------------- */

static void output_sink(struct agent_pipe *p, const uint8_t *data, uint32_t n)
{
    struct agent_repl *r = p->proc->data;

    if (r == NULL || (r->state == RS_BUSY && r->ev_stream)) {
        return; /* a streaming eval whose stream was cancelled: its output is discarded */
    }
    buf_append(&r->out[p == &p->proc->out ? 0 : 1], data, n, SBX_REPL_OUT_MAX);
}

static void proc_done(struct agent_proc *p)
{
    struct agent_repl *r = p->data;
    char text[96], sigbuf[32];
    struct sbx_err err;

    p->data = NULL;
    p->on_done = NULL;
    p->out.sink = p->err.sink = NULL;
    p->collected = true;   /* the session reports it; the exit record may be evicted */
    eval_output_forget(r); /* its pipes are done: no bound may hold them */
    if (WIFSIGNALED(p->status)) {
        snprintf(text, sizeof(text), "interpreter exited (signal %s)",
                 sbx_signal_name(WTERMSIG(p->status), sigbuf, sizeof(sigbuf)));
    } else {
        snprintf(text, sizeof(text), "interpreter exited (exit status %d)", WEXITSTATUS(p->status));
    }
    r->proc = NULL;
    if (r->state == RS_STARTING && r->start_ref.conn != NULL) {
        uint32_t n = r->out[1].len < 512 ? r->out[1].len : 512;
        sbx_err_set(&err, SBX_E_UNSUPPORTED, "%s during start-up: %.*s", text, (int)n,
                    buf_bytes(&r->out[1]));
        start_fail(r, &err);
    } else if (r->state == RS_BUSY) {
        eval_finish(r, text);
    }
    repl_end(r);
    close_handle(r, (uv_handle_t *)&r->timer, &r->timer_open);
    repl_free_maybe(r);
}

static void timer_cb(uv_timer_t *t)
{
    struct agent_repl *r = t->data;
    struct sbx_err err;
    char line[32];
    uint64_t elapsed;
    int n;

    switch (r->timer_kind) {
    case RT_START:
        sbx_err_set(&err, SBX_E_TIMEOUT, "the interpreter was not ready within %u ms",
                    SBX_REPL_START_MS);
        start_fail(r, &err);
        repl_end(r);
        repl_signal(r, SIGKILL);
        break;
    case RT_EVAL:
        /* The loop's clock is coarse (whole milliseconds, and a clock that may lag the
         * monotonic one by a tick): a timer that came early is re-armed for the rest, so a
         * timed-out eval has always run for at least its timeout. */
        elapsed = agent_now_ns() - r->ev_start_ns;
        if (elapsed < r->ev_timeout_ns) {
            timer_start(r, RT_EVAL, (r->ev_timeout_ns - elapsed + 999999) / 1000000);
            break;
        }
        /* As ^C would: SIGINT to the foreground group. A shell interrupted back to its prompt
         * cannot say so itself, so it is asked for a pong, queued behind the interrupted code. */
        r->ev_timed_out = true;
        r->intr++;
        repl_signal(r, SIGINT);
        if (r->lang == LANG_SH || r->lang == LANG_BASH) {
            n = snprintf(line, sizeof(line), "__sbx_pong %u\n", r->intr);
            (void)code_send(r, line, (size_t)n); /* fails only if the shell is gone */
        }
        timer_start(r, RT_INTR, SBX_REPL_INTR_MS);
        break;
    case RT_INTR:
    case RT_CLOSE:
        /* Not back within the grace period: the session ends with the process. */
        repl_signal(r, SIGKILL);
        break;
    }
}

static void timer_start(struct agent_repl *r, enum repl_timer kind, uint64_t ms)
{
    r->timer_kind = kind;
    /* The loop's cached time can lag the eval's start: refresh it, so a timeout never fires
     * before @ms have passed since then. */
    uv_update_time(r->timer.loop);
    uv_timer_start(&r->timer, timer_cb, ms, 0);
}

/* --- requests ----------------------------------------------------------------------------- */

/* The language of an interpreter named @argv0 (PROTOCOL.md 16.2), or -1. */
static int lang_from_argv0(const char *argv0)
{
    const char *b = strrchr(argv0, '/');

    b = b != NULL ? b + 1 : argv0;
    if (strcmp(b, "sh") == 0 || strcmp(b, "dash") == 0 || strcmp(b, "ash") == 0) {
        return LANG_SH;
    }
    if (strcmp(b, "bash") == 0) {
        return LANG_BASH;
    }
    if (strcmp(b, "python3") == 0 || strcmp(b, "python") == 0 ||
        (strncmp(b, "python3.", 8) == 0 && b[8] != '\0' &&
         strspn(b + 8, "0123456789") == strlen(b + 8))) {
        return LANG_PYTHON;
    }
    if (strcmp(b, "node") == 0 || strcmp(b, "nodejs") == 0) {
        return LANG_NODE;
    }
    if (strcmp(b, "deno") == 0) {
        return LANG_DENO;
    }
    return -1;
}

/* The full command: the interpreter (@user_argv, or the language's default) plus what the
 * driver needs. NULL with @err. */
static char **build_argv(enum repl_lang lang, const msgpack_object *user_argv, struct sbx_err *err)
{
    const char *tail[4] = { NULL, NULL, NULL, NULL };
    uint32_t nuser = user_argv != NULL ? user_argv->via.array.size : 1;
    char **user = NULL, **v;
    size_t k = 0;

    if (user_argv != NULL &&
        (user = agent_strv_from_array(user_argv, "argv", SBX_ARG_MAX, 0, err)) == NULL) {
        return NULL;
    }
    v = calloc(nuser + 8, sizeof(char *));
    if (v == NULL) {
        agent_strv_free(user);
        sbx_err_oom(err);
        return NULL;
    }
    v[k++] = user != NULL ? user[0] : strdup(lang_names[lang]);
    if (lang == LANG_BASH) {
        /* bash takes its long options first. */
        v[k++] = strdup("--norc");
        v[k++] = strdup("--noprofile");
    }
    for (uint32_t i = 1; user != NULL && i < nuser; i++) {
        v[k++] = user[i];
    }
    free(user); /* its strings are v's now */
    switch (lang) {
    case LANG_SH:
        /* Interactive, reading commands from fd 3: ^C returns to the "prompt" as a user expects,
         * and errors in the code never end the shell. */
        tail[0] = "-i";
        tail[1] = "/proc/self/fd/3";
        break;
    case LANG_BASH:
        tail[0] = "/proc/self/fd/3"; /* bash -i with a script is not interactive: trap INT */
        break;
    case LANG_PYTHON:
        tail[0] = "-u";
        tail[1] = "-c";
        tail[2] = sbx_repl_driver_py;
        break;
    case LANG_NODE:
        tail[0] = "--expose-internals"; /* node's own top-level-await rewriter (internal/repl) */
        tail[1] = "-e";
        tail[2] = sbx_repl_driver_js;
        break;
    case LANG_DENO:
        tail[0] = "eval";
        tail[1] = "--quiet";
        tail[2] = sbx_repl_driver_deno;
        break;
    }
    for (int i = 0; tail[i] != NULL; i++) {
        v[k++] = strdup(tail[i]);
    }
    for (size_t i = 0; i < k; i++) {
        if (v[i] == NULL) {
            for (size_t j = 0; j < k; j++) { /* agent_strv_free would stop at the hole */
                free(v[j]);
            }
            free(v);
            sbx_err_oom(err);
            return NULL;
        }
    }
    return v;
}

static int parse_lang(const msgpack_object *params, const msgpack_object **argv, int *lang,
                      struct sbx_err *err)
{
    char name[16];
    const char *first;
    size_t flen;
    int rl, ra;

    rl = sbx_param_cstr(params, "language", SBX_OPTIONAL, name, sizeof(name), err);
    if (rl < 0) {
        return -1;
    }
    ra = sbx_param_array(params, "argv", SBX_OPTIONAL, SBX_ARGV_MAX, argv, err);
    if (ra < 0) {
        return -1;
    }
    if (ra == 0 && (*argv)->via.array.size == 0) {
        return sbx_err_param(err, "argv", "argv must not be empty");
    }
    if (rl == 1 && ra == 1) {
        return sbx_err_param(err, "language", "give \"language\" or \"argv\"");
    }
    *lang = -1;
    if (rl == 0) {
        for (int i = 0; i < (int)ARRAY_SIZE(lang_names); i++) {
            if (strcmp(name, lang_names[i]) == 0) {
                *lang = i;
            }
        }
        if (*lang < 0) {
            return sbx_err_param(err, "language",
                                 "language must be \"sh\", \"bash\", \"python3\", \"node\" or "
                                 "\"deno\"");
        }
    } else {
        char a0[256];
        if (!sbx_obj_bytes(&(*argv)->via.array.ptr[0], &first, &flen) || flen >= sizeof(a0)) {
            return sbx_err_param(err, "language", "cannot infer the language from argv[0]");
        }
        memcpy(a0, first, flen);
        a0[flen] = '\0';
        *lang = lang_from_argv0(a0);
        if (*lang < 0) {
            return sbx_err_param(err, "language",
                                 "cannot infer the language from argv[0] \"%s\"; give \"language\"",
                                 a0);
        }
    }
    return 0;
}

static int open_pipe(struct agent_repl *r, uv_pipe_t *h, int fd, bool *open)
{
    int rc = uv_pipe_init(r->a->loop, h, 0);

    if (rc < 0) {
        close(fd);
        return rc;
    }
    h->data = r;
    r->handles++;
    *open = true;
    rc = uv_pipe_open(h, fd);
    if (rc < 0) {
        close(fd);
    }
    return rc;
}

/*
 * The interpreter started (or could not): wire its control pipes and terminal, then wait for the
 * driver's "ready". The descriptors wait in r->code_fd, r->ctl_fd and r->master until here.
 */
static void repl_started(struct agent_proc *p, const struct sbx_err *e, void *data)
{
    struct agent_repl *r = data;
    struct sbx_err err;
    int given;

    if (p == NULL) {
        start_fail(r, e);
        close(r->code_fd);
        close(r->ctl_fd);
        close(r->master);
        free(r);
        return;
    }
    r->proc = p;
    r->pid = p->pid;
    r->proc_id = (uint32_t)p->id;
    r->started_wall_ns = p->start_wall_ns;
    p->data = r;
    p->on_done = proc_done;
    p->out.sink = p->err.sink = output_sink;
    p->out.ringless = p->err.ringless = true;
    agent_pipe_update(&p->out);
    agent_pipe_update(&p->err);
    uv_timer_init(r->a->loop, &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    r->handles++;
    /* Failures below leave a process that cannot be driven: kill it; its exit ends the session.
     * open_pipe takes its fd even when it fails; the ones it never got are closed here. */
    given = 0;
    if (open_pipe(r, &r->code, r->code_fd, &r->code_open) == 0 && ++given &&
        open_pipe(r, &r->ctl, r->ctl_fd, &r->ctl_open) == 0 && ++given &&
        open_pipe(r, &r->tty, r->master, &r->tty_open) == 0 && ++given &&
        uv_read_start((uv_stream_t *)&r->ctl, ctl_alloc_cb, ctl_read_cb) == 0 &&
        uv_read_start((uv_stream_t *)&r->tty, ctl_alloc_cb, tty_read_cb) == 0 &&
        (r->lang != LANG_SH && r->lang != LANG_BASH
             ? 0
             : code_send(r, sbx_repl_prologue_sh, sbx_repl_prologue_sh_len)) == 0) {
        given = -1;
    }
    if (given >= 0) {
        if (given < 1) {
            close(r->ctl_fd);
        }
        if (given < 2) {
            close(r->master);
        }
        sbx_err_set(&err, SBX_E_INTERNAL, "cannot set up the control pipes");
        start_fail(r, &err);
        r->state = RS_ENDED;
        repl_end(r);
        repl_signal(r, SIGKILL);
        return;
    }
    agent_list_add_tail(&r->a->repls, &r->link);
    r->linked = true;
    timer_start(r, RT_START, SBX_REPL_START_MS);
}

int agent_repl_start(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    const msgpack_object *uargv = NULL;
    struct agent_repl *r = NULL;
    int lang, cp[2] = { -1, -1 }, rp[2] = { -1, -1 }, extra[2], rc;
    char tag[32];
    char **argv = NULL;

    if (parse_lang(m->params, &uargv, &lang, err) < 0 ||
        (argv = build_argv((enum repl_lang)lang, uargv, err)) == NULL) {
        return -1;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL || pipe2(cp, O_CLOEXEC) < 0 || pipe2(rp, O_CLOEXEC) < 0) {
        if (r == NULL) {
            sbx_err_oom(err);
        } else {
            sbx_err_sys(err, errno, "pipe", "create pipes");
        }
        goto fail;
    }
    r->a = a;
    r->id = ++a->next_repl;
    r->lang = (enum repl_lang)lang;
    r->state = RS_STARTING;
    snprintf(tag, sizeof(tag), "repl:%u", r->id);
    extra[0] = cp[0];
    extra[1] = rp[1];
    rc = agent_proc_spawn_repl(a, m->params, argv, tag, extra, &r->master, repl_started, r, err);
    argv = NULL;        /* taken over by the start, also on failure */
    cp[0] = rp[1] = -1; /* likewise */
    if (rc < 0) {
        goto fail;
    }
    r->code_fd = cp[1];
    r->ctl_fd = rp[0];
    agent_conn_ref_add(c, &r->start_ref, repl_ref_gone);
    r->start_id = m->id;
    return AGENT_LATER; /* answered by repl_started, on_ready, proc_done, timer_cb or repl.close */

fail:
    for (int i = 0; i < 2; i++) {
        if (cp[i] >= 0) {
            close(cp[i]);
        }
        if (rp[i] >= 0) {
            close(rp[i]);
        }
    }
    free(r);
    agent_strv_free(argv);
    return -1;
}

/* The output captured since the last eval starts a streaming eval's stream on pipe @p: it goes
 * out before anything read from now on, as credit comes (a client's recv_window may be far below
 * what was kept, PROTOCOL.md §6.2), and the stream does not end before it all went. */
static void flush_pending(struct agent_repl *r, struct agent_pipe *p, struct repl_buf *b)
{
    r->ev_cut = r->ev_cut || b->truncated; /* more came before the eval than was kept */
    agent_pipe_lead(p, b->data, b->len);
    b->data = NULL;
    buf_reset(b);
}

int agent_repl_eval(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_repl *r;
    const char *code;
    size_t len;
    uint64_t timeout = 0;
    bool stream = false, json = false;
    const char *format = NULL;
    size_t flen = 0;

    /* Params first, then the session: BAD_PARAM wins over NOT_FOUND (PROTOCOL.md §7.2). */
    if (sbx_param_str(m->params, "code", SBX_REQUIRED, SBX_REPL_CODE_MAX, &code, &len, err) != 0 ||
        sbx_param_u64(m->params, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &timeout, err) < 0 ||
        sbx_param_bool(m->params, "stream", SBX_OPTIONAL, &stream, err) < 0 ||
        sbx_param_str(m->params, "format", SBX_OPTIONAL, 16, &format, &flen, err) < 0) {
        return -1;
    }
    if (format != NULL && !(flen == 4 && memcmp(format, "text", 4) == 0)) {
        if (!(flen == 4 && memcmp(format, "json", 4) == 0)) {
            sbx_err_param(err, "format", "repl.eval: format must be \"text\" or \"json\"");
            return -1;
        }
        json = true;
    }
    if ((r = repl_find(c->a, m->params, err)) == NULL) {
        return -1;
    }
    if (json && r->lang != LANG_DENO) {
        sbx_err_param(err, "format", "repl.eval: format \"json\" needs a deno session");
        return -1;
    }
    if ((r->lang == LANG_SH || r->lang == LANG_BASH) && memchr(code, '\0', len) != NULL) {
        sbx_err_param(err, "code", "shell code cannot contain a NUL byte");
        return -1;
    }
    if (r->state != RS_IDLE) {
        sbx_err_set(err, SBX_E_BUSY, "REPL session %u is %s", r->id,
                    r->state == RS_STARTING ? "starting" : "running an eval");
        return -1;
    }
    if (stream) {
        struct agent_stream *so, *se;
        msgpack_packer *pk;
        if (agent_stream_reserve(c, 2, err) < 0) {
            return -1;
        }
        so = agent_stream_new(c, AGENT_STREAM_OUT, &r->proc->out, err);
        r->ev_cut = false;
        se = agent_stream_new(c, AGENT_STREAM_OUT, &r->proc->err, err);
        {
            struct sbx_eval_streams res = { .eval = r->evals + 1, .out = so->id, .err = se->id };
            pk = agent_conn_begin(c);
            sbx_pack_response_head(pk, m->id);
            sbx_eval_streams_pack(pk, &res);
        }
        agent_conn_send(c);
        flush_pending(r, &r->proc->out, &r->out[0]);
        flush_pending(r, &r->proc->err, &r->out[1]);
        agent_pipe_update(&r->proc->out);
        agent_pipe_update(&r->proc->err);
    }
    if (code_frame(r, code, len, json) < 0) {
        if (stream) {
            /* Answered already: both streams end with the error. */
            r->ev_stream = true;
            eval_cancel(r);
            return AGENT_REPLIED;
        }
        sbx_err_set(err, SBX_E_INTERNAL, "cannot send code to the interpreter");
        return -1;
    }
    r->evals++;
    r->state = RS_BUSY;
    repl_pace(r, false);
    unclaimed_drop(r); /* a new eval: an older result nobody collected is stale now */
    agent_conn_ref_add(c, &r->ev_ref, repl_ref_gone);
    r->ev_id = m->id;
    r->ev_stream = stream;
    r->ev_timed_out = false;
    r->ev_start_ns = agent_now_ns();
    r->ev_timeout_ns = (uint64_t)timeout * 1000000;
    r->status = 0;
    if (timeout > 0) {
        timer_start(r, RT_EVAL, timeout);
    }
    /* A streaming eval was answered above (repl.result follows); otherwise eval_finish answers. */
    return stream ? AGENT_REPLIED : AGENT_LATER;
}

int agent_repl_close(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_repl *r = repl_find(c->a, m->params, err);
    struct sbx_err cancelled;

    if (r == NULL) {
        return -1;
    }
    if (r->state == RS_STARTING && r->start_ref.conn != NULL) {
        /* Another request's answer: the pending repl.start. */
        sbx_err_set(&cancelled, SBX_E_CANCELLED, "REPL session %u was closed", r->id);
        start_fail(r, &cancelled);
    } else if (r->state == RS_BUSY) {
        eval_cancel(r);
    }
    repl_end(r);
    /* Interactive shells ignore SIGTERM; the hangup from closing the master reaches them. */
    repl_signal(r, SIGTERM);
    repl_signal(r, SIGHUP);
    timer_start(r, RT_CLOSE, SBX_REPL_CLOSE_MS);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_repl_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    msgpack_packer *pk = agent_conn_begin(c);
    struct agent_link *l;
    uint32_t n = 0;

    for (l = a->repls.next; l != &a->repls; l = l->next) {
        n++;
    }
    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "sessions");
    msgpack_pack_array(pk, n);
    for (l = a->repls.next; l != &a->repls; l = l->next) {
        struct agent_repl *r = agent_container_of(l, struct agent_repl, link);
        msgpack_pack_map(pk, 8);
        sbx_pack_kv_u64(pk, "session", r->id);
        sbx_pack_kv_str(pk, "language", lang_names[r->lang]);
        sbx_pack_kv_i64(pk, "pid", r->pid);
        sbx_pack_kv_u64(pk, "proc", r->proc_id);
        sbx_pack_kv_u64(pk, "started_ns", r->started_wall_ns);
        sbx_pack_kv_bool(pk, "busy", r->state != RS_IDLE);
        sbx_pack_kv_u64(pk, "evals", r->evals);
        sbx_pack_cstr(pk, "unclaimed");
        if (r->unclaimed_eval != 0) {
            msgpack_pack_uint32(pk, r->unclaimed_eval);
        } else {
            msgpack_pack_nil(pk);
        }
    }
    agent_conn_send(c);
    return AGENT_REPLIED;
}

int agent_repl_collect(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_repl *r = repl_find(c->a, m->params, err);
    msgpack_packer *pk;

    if (r == NULL) {
        return -1;
    }
    if (r->unclaimed_eval == 0) {
        sbx_err_set(err, SBX_E_NOT_FOUND, "REPL session %u has no unclaimed result", r->id);
        return -1;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    /* The map was packed when the eval finished: its bytes are the result as they are. */
    (void)pk->callback(pk->data, r->unclaimed.data, r->unclaimed.size);
    agent_conn_send(c);
    unclaimed_drop(r);
    return AGENT_REPLIED;
}
