/*
 * spawn, processWait, processKill (docs/GATEWAY.md) on proc.spawn, proc.wait and
 * proc.kill. The SDK's `pid` is the agent's process id (proc.spawn's `id`): the number every
 * later call names, stable across reconnects, never reused by the agent.
 *
 * Standard input comes from a client stream (stdinStreamId): a stdin pipe claims it when the
 * request arrives (its bytes may come before or after), queues what the agent's stream has no
 * room for (everything until proc.spawn answers), and holds the WebSocket while more than
 * GW_AGENT_QUEUE_HIGH waits (the SDK has no flow control of its own); more than GW_SINK_MAX cuts
 * the stream (LIMIT). The child closing its stdin cancels the client's stream (BrokenPipe).
 */
#include "m_proc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- stdin ---------------------------------------------------------------------------------- */

struct stdin_pipe {
    struct gw_session *s;
    uint64_t sdk;        /* the client's stream id */
    uint32_t sid;        /* the agent's stdin stream; 0 until proc.spawn answered */
    struct gw_bytes q;   /* what waits for the agent's stream */
    bool claimed;        /* the client stream is still delivering to us */
    bool end;            /* the client ended the stream: end the agent's once the queue is out */
    bool fed;            /* registered with gw_session_feed */
    struct gw_hold hold; /* on while too much waits here */
};

static void pipe_hold(struct stdin_pipe *p, bool hold)
{
    gw_session_hold(p->s, &p->hold, hold);
}

static void pipe_free(struct stdin_pipe *p)
{
    pipe_hold(p, false);
    if (p->fed) {
        gw_session_unfeed(p->s, p->sid);
    }
    gw_bytes_clear(&p->q);
    free(p);
}

/*
 * Give the client's stream up, telling it @reason (stolen): the process's stdin is cancelled
 * (before proc.spawn answered: it gets an empty stdin, closed at once). Returns -1 when the pipe
 * is freed (after the answer; before it, the answer frees it).
 */
static int pipe_cut(struct stdin_pipe *p, json_t *reason)
{
    struct sbx_conn *c = gw_session_conn(p->s);
    struct sbx_err err;

    if (p->claimed) {
        p->claimed = false;
        gw_istream_cancel(p->s, p->sdk, reason);
    } else {
        json_decref(reason);
    }
    gw_bytes_clear(&p->q);
    pipe_hold(p, false);
    if (p->sid == 0) {
        p->end = true;
        return 0;
    }
    if (c != NULL) {
        (void)sbx_conn_cancel(c, p->sid, &err); /* -1: no longer live, nothing to cancel */
        gw_session_flush(p->s);
    }
    pipe_free(p);
    return -1;
}

/* The hold's stall: the process took none of its stdin for --stream-stall-timeout. */
static void pipe_stalled(void *user, int64_t ms)
{
    struct stdin_pipe *p = user;
    char d[32], msg[200];

    gw_duration_text(ms, d, sizeof(d));
    snprintf(msg, sizeof(msg),
             p->sid == 0 ? "stdin: the process did not start within %s while its input waited"
                         : "stdin: the process read none of it for %s",
             d);
    (void)pipe_cut(p, gw_errobj("TimedOut", "ETIMEDOUT", msg));
}

/* Move queued bytes into the agent's stream while it stays under GW_AGENT_QUEUE_HIGH; end it
 * when the client did and everything is out. Returns -1 when the pipe is finished (freed). */
static int pipe_pump(struct stdin_pipe *p)
{
    struct sbx_conn *c = gw_session_conn(p->s);
    struct sbx_err err;
    size_t before = p->q.len;

    if (p->sid == 0) {
        /* proc.spawn not answered yet: everything waits here, held as toward the agent (an
         * agent slow to start the process must not let the client's bytes pile up). */
        pipe_hold(p, p->q.len > GW_AGENT_QUEUE_HIGH);
        return 0;
    }
    if (c == NULL || !sbx_conn_stream_live(c, p->sid)) {
        /* The child closed its stdin (the agent cancelled the stream) or the agent is gone. */
        if (p->claimed) {
            p->claimed = false;
            gw_istream_cancel(p->s, p->sdk,
                              gw_errobj("BrokenPipe", "EPIPE", "the process closed its stdin"));
        }
        pipe_free(p);
        return -1;
    }
    while (p->q.head != NULL) {
        struct gw_chunk *q = p->q.head;
        size_t inq = sbx_conn_queued(c, p->sid);
        size_t n = q->len - q->off;

        if (inq >= GW_AGENT_QUEUE_HIGH) {
            break;
        }
        if (n > GW_AGENT_QUEUE_HIGH - inq) {
            n = GW_AGENT_QUEUE_HIGH - inq;
        }
        if (sbx_conn_write(c, p->sid, q->data + q->off, n, &err) < 0) {
            gw_log("stdin of stream %u: %s", p->sid, err.msg);
            break;
        }
        gw_bytes_take(&p->q, n);
    }
    if (p->q.len < before) {
        gw_session_hold_progress(p->s, &p->hold); /* the process is reading */
    }
    pipe_hold(p, p->q.len > GW_AGENT_QUEUE_HIGH);
    if (p->end && p->q.head == NULL) {
        (void)sbx_conn_end(c, p->sid, NULL, &err); /* -1: cancelled meanwhile, nothing to end */
        pipe_free(p);
        return -1;
    }
    gw_session_flush(p->s);
    return 0;
}

static void pipe_credit(void *user)
{
    (void)pipe_pump(user);
}

static int pipe_data(void *user, const uint8_t *data, size_t len)
{
    struct stdin_pipe *p = user;

    if (len > GW_SINK_MAX - p->q.len) {
        char msg[128];

        snprintf(msg, sizeof(msg), "stdin: more than %u MiB would wait for the process",
                 GW_SINK_MAX >> 20);
        (void)pipe_cut(p, gw_errobj("Error", "LIMIT", msg));
        return 0; /* cancelled toward the client already */
    }
    if (gw_bytes_push(&p->q, data, len) < 0) {
        return -1;
    }
    if (pipe_pump(p) < 0) {
        return 0; /* finished: the stream was cancelled toward the client already */
    }
    return 0;
}

static void pipe_end(void *user)
{
    struct stdin_pipe *p = user;

    p->claimed = false;
    p->end = true;
    if (p->sid != 0) {
        (void)pipe_pump(p);
    }
}

static void pipe_error(void *user, json_t *error)
{
    struct stdin_pipe *p = user;
    struct sbx_conn *c = gw_session_conn(p->s);
    struct sbx_err err;

    (void)error;
    p->claimed = false;
    if (p->sid == 0) {
        p->end = true; /* the spawn's answer frees it after closing stdin */
        return;
    }
    if (c != NULL) {
        (void)sbx_conn_cancel(c, p->sid, &err);
        gw_session_flush(p->s);
    }
    pipe_free(p);
}

/* --- spawn ---------------------------------------------------------------------------------- */

struct spawn_state {
    struct stdin_pipe *in; /* owned until proc.spawn answers */
    struct gw_spawn_ext ext;
};

static void spawn_state_free(void *data)
{
    struct spawn_state *st = data;

    if (st->in != NULL) {
        if (st->in->claimed) {
            gw_istream_cancel(st->in->s, st->in->sdk, NULL);
        }
        pipe_free(st->in);
    }
    free(st);
}

static json_t *sid_json(struct gw_session *s, uint32_t sid, gw_ostream_xform_fn xform, void *user)
{
    uint64_t id;

    if (sid == 0) {
        return json_null();
    }
    id = gw_ostream_open(s, sid, xform, user);
    return id != 0 ? json_integer((json_int_t)id) : json_null();
}

static void spawn_done(struct gw_call *call, const struct sbx_event *ev)
{
    struct spawn_state *st = call->data;
    const struct sbx_spawn_result *r = &ev->r.spawn;
    json_t *out, *err, *res;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, call->method, NULL);
        return;
    }
    out = sid_json(call->s, r->out, NULL, NULL);
    err = sid_json(call->s, r->err, st->ext.err_xform, st->ext.xform_user);
    if (st->in != NULL) {
        struct stdin_pipe *p = st->in;

        st->in = NULL;
        p->sid = r->in;
        if (p->sid == 0) {
            /* No stdin stream for the pipe asked for (the agent's to give): as a child that
             * closed its stdin. pipe_pump takes sid 0 for "not answered yet", and the pipe,
             * owned by no call from here, would never be freed. */
            if (p->claimed) {
                p->claimed = false;
                gw_istream_cancel(call->s, p->sdk,
                                  gw_errobj("BrokenPipe", "EPIPE", "the process has no stdin"));
            }
            pipe_free(p);
        } else {
            if (gw_session_feed(call->s, p->sid, pipe_credit, p) == 0) {
                p->fed = true;
            }
            (void)pipe_pump(p); /* also ends stdin if the client ended its stream already */
        }
    }
    res = json_pack("{s:I, s:o, s:o}", "pid", (json_int_t)r->id, "stdoutStreamId", out,
                    "stderrStreamId", err);
    if (st->ext.spawned != NULL && res != NULL) {
        st->ext.spawned(call, r, res, st->ext.user);
    }
    gw_call_ok(call, res);
}

static int stdio_mode(struct gw_call *call, json_t *params, const char *key, enum sbx_stdio *mode)
{
    const char *v;

    if (gw_param_str(call, params, key, false, &v) < 0) {
        return -1;
    }
    if (v == NULL || strcmp(v, "piped") == 0 || strcmp(v, "inherit") == 0) {
        *mode = SBX_STDIO_PIPE; /* the SDK sends "inherit" as "piped" and prints it itself */
    } else if (strcmp(v, "null") == 0) {
        *mode = SBX_STDIO_NULL;
    } else {
        gw_call_fail(call, "TypeError", NULL, "%s: %s must be \"piped\" or \"null\"", call->method,
                     key);
        return -1;
    }
    return 0;
}

/* env {NAME: value} as a NULL-terminated "NAME=value" array kept by the call. */
int gw_proc_env_param(struct gw_call *call, json_t *params, const char ***out)
{
    json_t *env, *v;
    const char *k;
    char **arr;
    size_t i = 0;

    *out = NULL;
    if (gw_param_obj(call, params, "env", false, &env) < 0) {
        return -1;
    }
    if (env == NULL) {
        return 0;
    }
    if (json_object_size(env) > SBX_ENV_MAX) {
        gw_call_fail(call, "TypeError", NULL, "%s: too many env entries", call->method);
        return -1;
    }
    arr = calloc(json_object_size(env) + 1, sizeof(*arr));
    if (arr == NULL || gw_call_keep(call, arr, free) < 0) {
        free(arr);
        gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
        return -1;
    }
    json_object_foreach(env, k, v)
    {
        if (!json_is_string(v) || k[0] == '\0' || strchr(k, '=') != NULL ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            gw_call_fail(call, "TypeError", NULL,
                         "%s: env '%.64s' must be a name without '=' and a string value",
                         call->method, k);
            return -1;
        }
        if (asprintf(&arr[i], "%s=%s", k, json_string_value(v)) < 0 ||
            gw_call_keep(call, arr[i], free) < 0) {
            gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
            return -1;
        }
        i++;
    }
    *out = (const char **)arr;
    return 0;
}

void gw_proc_spawn(struct gw_call *call, json_t *params, const char *const *argv,
                   const struct gw_spawn_ext *ext)
{
    struct gw_session *s = call->s;
    struct sbx_spawn_params sp = { 0 };
    const char *cwd, **env;
    struct spawn_state *st;
    json_t *stdin_id;
    struct sbx_err err;

    if (gw_proc_env_param(call, params, &env) < 0 ||
        gw_param_bool(call, params, "clearEnv", false, &sp.clear_env) < 0 ||
        gw_param_str(call, params, "cwd", false, &cwd) < 0 ||
        stdio_mode(call, params, "stdout", &sp.stdout_mode) < 0 ||
        stdio_mode(call, params, "stderr", &sp.stderr_mode) < 0) {
        return;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
        return;
    }
    if (ext != NULL) {
        st->ext = *ext;
    }
    call->data = st;
    call->data_free = spawn_state_free;
    sp.argv = (const char **)argv;
    sp.env = env;
    sp.cwd = cwd != NULL ? cwd : gw_session_cwd(s);
    sp.user = gw_session_user(s);
    sp.stdin_mode = SBX_STDIO_NULL;
    stdin_id = json_object_get(params, "stdinStreamId");
    if (stdin_id != NULL && !json_is_null(stdin_id)) {
        struct gw_istream_sink sink = { pipe_data, pipe_end, pipe_error, NULL };

        if (!json_is_integer(stdin_id) || json_integer_value(stdin_id) < 0) {
            gw_call_fail(call, "TypeError", NULL, "%s: stdinStreamId must be a stream id",
                         call->method);
            return;
        }
        st->in = calloc(1, sizeof(*st->in));
        if (st->in == NULL) {
            gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
            return;
        }
        st->in->s = s;
        st->in->sdk = (uint64_t)json_integer_value(stdin_id);
        st->in->hold.stalled = pipe_stalled;
        st->in->hold.user = st->in;
        sink.user = st->in;
        if (gw_istream_claim(s, st->in->sdk, &sink) < 0) {
            gw_call_fail(call, "BadResource", NULL,
                         "%s: stdinStreamId %llu was not started or is already in use",
                         call->method, (unsigned long long)st->in->sdk);
            return;
        }
        /* claim may have delivered an error already: then the pipe is marked ended. */
        st->in->claimed = !st->in->end;
        sp.stdin_mode = SBX_STDIO_PIPE;
    }
    if (sbx_proc_spawn(gw_session_conn(s), &sp, gw_call_expect(call, spawn_done), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, call->method, argv[0]);
        return;
    }
    gw_session_flush(s);
}

void gw_m_spawn(struct gw_call *call, json_t *params)
{
    const char *command, **args, **argv;
    size_t nargs;

    if (gw_param_str(call, params, "command", true, &command) < 0 ||
        gw_param_strv(call, params, "args", &args, &nargs) < 0) {
        return;
    }
    if (command[0] == '\0') {
        gw_call_fail(call, "TypeError", NULL, "spawn: command must not be empty");
        return;
    }
    argv = calloc(nargs + 2, sizeof(*argv));
    if (argv == NULL || gw_call_keep(call, argv, free) < 0) {
        free(argv);
        gw_call_fail(call, "Error", "ENOMEM", "spawn: out of memory");
        return;
    }
    argv[0] = command;
    for (size_t i = 0; i < nargs; i++) {
        argv[i + 1] = args[i];
    }
    gw_proc_spawn(call, params, argv, NULL);
}

/* --- processWait, processKill --------------------------------------------------------------- */

/* The agent's NOT_FOUND for a process id is the SDK's ENOENT (kill and close swallow it). */
static void fail_proc(struct gw_call *call, const struct sbx_err *e, const char *op, int64_t pid)
{
    if (strcmp(e->code, SBX_E_NOT_FOUND) == 0) {
        gw_call_fail(call, "NotFound", "ENOENT", "%s: no such process: %lld", op, (long long)pid);
        return;
    }
    gw_call_fail_sbx(call, e, op, NULL);
}

static void wait_done(struct gw_call *call, const struct sbx_event *ev)
{
    const struct sbx_exit *x = &ev->r.exit;
    char buf[16];
    const char *sig;

    if (ev->error != NULL) {
        fail_proc(call, ev->error, "processWait", (int64_t)(intptr_t)call->data);
        return;
    }
    sig = x->exited ? NULL : sbx_signal_name(x->signo, buf, sizeof(buf));
    gw_call_ok(call,
               json_pack("{s:b, s:i, s:o, s:o}", "success", x->exited && x->code == 0, "code",
                         sbx_exit_status(x), "signal", sig != NULL ? json_string(sig) : json_null(),
                         "oom", x->oom ? json_string("high-confidence") : json_null()));
}

static int pid_param(struct gw_call *call, json_t *params, int64_t *pid)
{
    bool vscode;

    if (gw_param_int(call, params, "pid", true, 0, UINT32_MAX, 0, pid) < 0 ||
        gw_param_bool(call, params, "vscode", false, &vscode) < 0) {
        return -1;
    }
    if (vscode) {
        gw_call_fail(call, "NotSupported", "ENOTSUP", "%s: VS Code is not supported by sbx-gateway",
                     call->method);
        return -1;
    }
    return 0;
}

void gw_m_process_wait(struct gw_call *call, json_t *params)
{
    struct sbx_err err;
    int64_t pid;

    if (pid_param(call, params, &pid) < 0) {
        return;
    }
    call->data = (void *)(intptr_t)pid;
    if (sbx_proc_wait(gw_session_conn(call->s), (uint32_t)pid, 0, gw_call_expect(call, wait_done),
                      NULL, &err) < 0) {
        gw_call_unexpect(call);
        fail_proc(call, &err, "processWait", pid);
        return;
    }
    gw_session_flush(call->s);
}

static void kill_done(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fail_proc(call, ev->error, "processKill", (int64_t)(intptr_t)call->data);
        return;
    }
    gw_call_ok(call, NULL);
}

void gw_m_process_kill(struct gw_call *call, json_t *params)
{
    const char *name;
    struct sbx_err err;
    int64_t pid;
    int signo = SIGTERM;

    if (pid_param(call, params, &pid) < 0 ||
        gw_param_str(call, params, "signal", false, &name) < 0) {
        return;
    }
    /* Deno's names only ("SIGKILL"); names Linux lacks (SIGBREAK, SIGEMT, SIGINFO) are refused. */
    if (name != NULL && (strncmp(name, "SIG", 3) != 0 || (signo = sbx_signal_parse(name)) < 1)) {
        gw_call_fail(call, "TypeError", NULL, "processKill: unknown signal '%.32s'", name);
        return;
    }
    call->data = (void *)(intptr_t)pid;
    if (sbx_proc_kill(gw_session_conn(call->s), (uint32_t)pid, signo, false,
                      gw_call_expect(call, kill_done), NULL, &err) < 0) {
        gw_call_unexpect(call);
        fail_proc(call, &err, "processKill", pid);
        return;
    }
    gw_session_flush(call->s);
}

/* --- not supported ------------------------------------------------------------------------ */

void gw_m_vscode(struct gw_call *call, json_t *params)
{
    (void)params;
    gw_call_fail(call, "NotSupported", "ENOTSUP",
                 "vscode: sbx-gateway's images carry no VS Code server; use exposeSsh for a "
                 "terminal, or run a server of your own and exposeHttp it");
}

void gw_m_download(struct gw_call *call, json_t *params)
{
    (void)params;
    gw_call_fail(call, "NotSupported", "ENOTSUP",
                 "download names a path on the client's machine, which the gateway cannot "
                 "write; read the file with readFile or open/fileRead");
}
