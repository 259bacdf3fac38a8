/*
 * uv_spawn_many: one libuv loop drives many sbx agents at once through the sans-I/O connection
 * core (sbx/conn.h). On every connection: connect, hello, proc.spawn of `echo hi`, read stdout,
 * wait for proc.exit, check that the output is "hi\n" and the exit code 0. Exits 0 only when
 * every connection succeeded, printing a summary.
 *
 *   uv_spawn_many [--conns K] [--timeout-ms MS] [--quiet] SOCKET...
 *
 * Each SOCKET is an agent's unix socket path (sbx-agent --listen unix:PATH); --conns opens K
 * connections to each. The loop owns all I/O: libuv reads straight into the core's input buffer
 * (sbx_conn_feed_space in the alloc callback), and writes the core's output pieces with uv_write
 * (they stay valid until sbx_conn_out_done, so nothing is copied). The core never blocks, reads
 * a clock or touches a socket.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "sbx/conn.h"

#define IOV_MAX_PIECES 16
#define OUT_CAP        64 /* bytes of stdout kept per job; "hi\n" is 3 */

struct job {
    uv_pipe_t pipe;
    uv_connect_t connect;
    uv_write_t write;
    struct sbx_conn *c;
    const char *path;
    int index;
    bool writing;  /* a uv_write is in flight */
    size_t wlen;   /* ... of this many bytes */
    bool closing;  /* uv_close was called */
    bool done, ok; /* the job has an outcome */
    uint32_t proc, out_sid;
    bool out_ended;
    char out[OUT_CAP];
    size_t outlen;
    uint64_t t0, t_done; /* uv_hrtime at start and at the outcome */
    char why[512];
};

struct run {
    uv_loop_t *loop;
    struct job *jobs;
    int njobs, finished, failed;
    bool quiet;
    uv_timer_t timer;
};

static struct run R;

static void on_close(uv_handle_t *h)
{
    struct job *j = h->data;

    sbx_conn_free(j->c);
    j->c = NULL;
}

/* The job has its outcome: record it and close the connection. */
__attribute__((format(printf, 3, 4))) static void finish(struct job *j, bool ok, const char *fmt,
                                                         ...)
{
    va_list ap;

    if (j->done) {
        return;
    }
    j->done = true;
    j->ok = ok;
    j->t_done = uv_hrtime();
    va_start(ap, fmt);
    (void)vsnprintf(j->why, sizeof(j->why), fmt, ap);
    va_end(ap);
    R.finished++;
    if (!ok) {
        R.failed++;
        fprintf(stderr, "uv_spawn_many: %s (connection %d): %s\n", j->path, j->index, j->why);
    }
    if (!j->closing) {
        j->closing = true;
        uv_close((uv_handle_t *)&j->pipe, on_close);
    }
    if (R.finished == R.njobs) {
        uv_timer_stop(&R.timer);
        uv_close((uv_handle_t *)&R.timer, NULL);
    }
}

static void flush(struct job *j);

static void on_write(uv_write_t *w, int status)
{
    struct job *j = w->data;

    j->writing = false;
    if (j->done) {
        return; /* closed meanwhile (the write was cancelled) */
    }
    if (status < 0) {
        finish(j, false, "write: %s", uv_strerror(status));
        return;
    }
    sbx_conn_out_done(j->c, j->wlen);
    flush(j);
}

/* Hand what the core wants written to one uv_write; the pieces stay valid until out_done. */
static void flush(struct job *j)
{
    struct iovec iov[IOV_MAX_PIECES];
    uv_buf_t bufs[IOV_MAX_PIECES];
    int n, r;

    if (j->writing || j->done) {
        return;
    }
    n = sbx_conn_out_iov(j->c, iov, IOV_MAX_PIECES);
    if (n == 0) {
        return;
    }
    j->wlen = 0;
    for (int i = 0; i < n; i++) {
        bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
        j->wlen += iov[i].iov_len;
    }
    j->write.data = j;
    r = uv_write(&j->write, (uv_stream_t *)&j->pipe, bufs, (unsigned)n, on_write);
    if (r < 0) {
        finish(j, false, "write: %s", uv_strerror(r));
        return;
    }
    j->writing = true;
}

static void start_spawn(struct job *j)
{
    static const char *const argv[] = { "echo", "hi", NULL };
    struct sbx_spawn_params sp = { 0 };
    struct sbx_err err;

    sp.argv = argv;
    if (sbx_proc_spawn(j->c, &sp, j, NULL, &err) < 0) {
        finish(j, false, "proc.spawn: %s: %s", err.code, err.msg);
    }
}

static void on_response(struct job *j, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        finish(j, false, "%s: %s: %s", ev->method != NULL ? ev->method : "response",
               ev->error->code, ev->error->msg);
        return;
    }
    if (ev->call == SBX_CALL_HELLO) {
        start_spawn(j);
    } else if (ev->call == SBX_CALL_PROC_SPAWN) {
        j->proc = ev->r.spawn.id;
        j->out_sid = ev->r.spawn.out;
        (void)sbx_conn_stream_set_user(j->c, j->out_sid, j);
    }
}

static void on_exit_event(struct job *j, const struct sbx_event *ev)
{
    const struct sbx_exit *x = &ev->r.exit;

    if (x->id != j->proc) {
        finish(j, false, "proc.exit for process %u, not %u", x->id, j->proc);
    } else if (!j->out_ended) {
        finish(j, false, "proc.exit before the end of stdout (PROTOCOL.md 9.2)");
    } else if (!x->exited || x->code != 0) {
        finish(j, false, "echo ended with status %d", sbx_exit_status(x));
    } else if (j->outlen != 3 || memcmp(j->out, "hi\n", 3) != 0) {
        finish(j, false, "stdout was %zu bytes \"%.*s\", not \"hi\\n\"", j->outlen, (int)j->outlen,
               j->out);
    } else {
        finish(j, true, "ok");
    }
}

/* Take every event the core has; each may queue output. */
static void process(struct job *j)
{
    struct sbx_event ev;
    struct sbx_err err;
    int r;

    while (!j->done && (r = sbx_conn_next(j->c, &ev, &err)) == 1) {
        switch (ev.kind) {
        case SBX_EV_RESPONSE:
            on_response(j, &ev);
            break;
        case SBX_EV_DATA:
            if (ev.stream != j->out_sid || j->outlen + ev.len > OUT_CAP) {
                finish(j, false, "unexpected %zu bytes on stream %u", ev.len, ev.stream);
                break;
            }
            memcpy(j->out + j->outlen, ev.data, ev.len);
            j->outlen += ev.len;
            (void)sbx_conn_consumed(j->c, ev.stream, ev.len, &err);
            break;
        case SBX_EV_END:
            if (ev.error != NULL) {
                finish(j, false, "stream %u ended with %s", ev.stream, ev.error->code);
            } else if (ev.stream == j->out_sid) {
                j->out_ended = true;
            }
            break;
        case SBX_EV_EXIT:
            on_exit_event(j, &ev);
            break;
        case SBX_EV_CANCEL:
        case SBX_EV_ERROR:
            finish(j, false, "%s: %s", ev.error != NULL ? ev.error->code : "cancel",
                   ev.error != NULL ? ev.error->msg : "stream cancelled");
            break;
        default:
            break; /* credit, notifications nobody asked for */
        }
    }
    if (!j->done && r < 0) {
        finish(j, false, "%s: %s", err.code, err.msg);
        return;
    }
    flush(j);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct job *j = h->data;
    size_t len = 0;
    uint8_t *p = j->c != NULL ? sbx_conn_feed_space(j->c, &len) : NULL;

    (void)suggested;
    *buf = uv_buf_init((char *)p, (unsigned)len); /* 0 bytes: libuv reports UV_ENOBUFS */
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct job *j = s->data;

    (void)buf; /* it is the core's input buffer, filled in place */
    if (j->done) {
        return;
    }
    if (nread > 0) {
        sbx_conn_feed_commit(j->c, (size_t)nread);
        process(j);
        return;
    }
    if (nread < 0) {
        /* The agent closed the connection: the core fails what is outstanding. */
        sbx_conn_eof(j->c);
        process(j);
        finish(j, false, "connection ended: %s", uv_strerror((int)nread));
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    struct job *j = req->data;
    struct sbx_err err;
    int r;

    if (status < 0) {
        finish(j, false, "connect: %s", uv_strerror(status));
        return;
    }
    if (sbx_conn_hello(j->c, NULL, j, NULL, &err) < 0) {
        finish(j, false, "hello: %s: %s", err.code, err.msg);
        return;
    }
    r = uv_read_start((uv_stream_t *)&j->pipe, on_alloc, on_read);
    if (r < 0) {
        finish(j, false, "read: %s", uv_strerror(r));
        return;
    }
    flush(j);
}

static void on_timeout(uv_timer_t *t)
{
    (void)t;
    for (int i = 0; i < R.njobs; i++) {
        finish(&R.jobs[i], false, "timed out");
    }
}

static int start_job(struct job *j)
{
    struct sbx_err err;
    int r;

    j->t0 = uv_hrtime();
    j->c = sbx_conn_new(&err);
    if (j->c == NULL) {
        fprintf(stderr, "uv_spawn_many: %s\n", err.msg);
        return -1;
    }
    r = uv_pipe_init(R.loop, &j->pipe, 0);
    if (r < 0) {
        fprintf(stderr, "uv_spawn_many: uv_pipe_init: %s\n", uv_strerror(r));
        sbx_conn_free(j->c);
        return -1;
    }
    j->pipe.data = j;
    j->connect.data = j;
    uv_pipe_connect(&j->connect, &j->pipe, j->path, on_connect);
    return 0;
}

static void summary(uint64_t t0)
{
    double total = (double)(uv_hrtime() - t0) / 1e6, sum = 0, max = 0, min = 1e18;

    for (int i = 0; i < R.njobs; i++) {
        double ms = (double)(R.jobs[i].t_done - R.jobs[i].t0) / 1e6;
        sum += ms;
        max = ms > max ? ms : max;
        min = ms < min ? ms : min;
    }
    printf("uv_spawn_many: %d/%d connections ok (%d failed) in %.1f ms on one loop; per "
           "connection (connect, hello, spawn, output, exit): min %.1f ms, mean %.1f ms, max "
           "%.1f ms\n",
           R.njobs - R.failed, R.njobs, R.failed, total, min, sum / R.njobs, max);
}

static int usage(void)
{
    fprintf(stderr, "usage: uv_spawn_many [--conns K] [--timeout-ms MS] [--quiet] SOCKET...\n");
    return 2;
}

int main(int argc, char **argv)
{
    int conns = 1, timeout_ms = 30000, first = 1, nsock;
    uint64_t t0;

    while (first < argc && strncmp(argv[first], "--", 2) == 0) {
        if (strcmp(argv[first], "--conns") == 0 && first + 1 < argc) {
            conns = atoi(argv[first + 1]);
            first += 2;
        } else if (strcmp(argv[first], "--timeout-ms") == 0 && first + 1 < argc) {
            timeout_ms = atoi(argv[first + 1]);
            first += 2;
        } else if (strcmp(argv[first], "--quiet") == 0) {
            R.quiet = true;
            first++;
        } else {
            return usage();
        }
    }
    nsock = argc - first;
    if (nsock < 1 || conns < 1 || conns > 64 || timeout_ms < 1) {
        return usage();
    }
    R.loop = uv_default_loop();
    R.njobs = nsock * conns;
    R.jobs = calloc((size_t)R.njobs, sizeof(*R.jobs));
    if (R.jobs == NULL) {
        fprintf(stderr, "uv_spawn_many: out of memory\n");
        return 1;
    }
    uv_timer_init(R.loop, &R.timer);
    uv_timer_start(&R.timer, on_timeout, (uint64_t)timeout_ms, 0);
    t0 = uv_hrtime();
    for (int i = 0; i < R.njobs; i++) {
        R.jobs[i].path = argv[first + i / conns];
        R.jobs[i].index = i % conns;
        if (start_job(&R.jobs[i]) < 0) {
            return 1;
        }
    }
    uv_run(R.loop, UV_RUN_DEFAULT);
    summary(t0);
    if (!R.quiet) {
        for (int i = 0; i < R.njobs && i < 3; i++) {
            printf("  %s #%d: %s, stdout \"%.*s\"\n", R.jobs[i].path, R.jobs[i].index,
                   R.jobs[i].why, (int)(R.jobs[i].outlen > 0 ? R.jobs[i].outlen - 1 : 0),
                   R.jobs[i].out);
        }
    }
    (void)uv_loop_close(R.loop);
    free(R.jobs);
    return R.failed == 0 && R.finished == R.njobs ? 0 : 1;
}
