/*
 * bench_repl: REPL sessions and PTY output through the real sbx-agent (issue 6), against
 * baselines measured in the same run.
 *
 *   eval  repl.eval round trip of a trivial expression (`1+1`; shells `: $((1+1))`) per
 *         language, p50 after start, against the same interpreter driven locally over two pipes
 *         by a minimal read-eval-print loop (one line in, one line out).
 *   pty   `sbx-test-helper flood N` read from the agent through a PTY, against the same flood
 *         through the pipe path (stdout pipe); runs alternate.
 *   idle  the agent's CPU while an idle sh REPL's background `yes` writes to its stdout, against
 *         a detached `yes` nobody reads (both paced, agent/stream.c).
 *
 *   bench_repl [--quick] [--only eval,pty,idle] [--agent PATH] [--helper PATH] [--runs N]
 *              [--bytes N]
 *
 * Prints result rows (markdown) on stdout, progress and diagnostics on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "benchcli.h"

#define MAX_REPS 16

struct bench {
    const char *agent_bin, *helper_bin;
    char dir[64], sock[128];
    pid_t agent_pid;
    int runs;
    int reps;
    uint64_t bytes;
};

static int agent_start(struct bench *b, struct bcli *c)
{
    char addr[160];
    const char *argv[] = { b->agent_bin, "--listen", addr, NULL };
    uint64_t deadline = bench_now_ns() + 10000000000ull;

    snprintf(b->sock, sizeof(b->sock), "%s/agent.sock", b->dir);
    snprintf(addr, sizeof(addr), "unix:%s", b->sock);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);

    b->agent_pid = bench_spawn(argv, -1, null, null);
    if (null >= 0) {
        close(null);
    }
    if (b->agent_pid < 0) {
        return -1;
    }
    /* The socket appears at bind(), before listen(): probe until a connect succeeds. */
    for (;;) {
        struct sockaddr_un sa;
        int fd = bench_unix_addr(&sa, b->sock) == 0 ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
                                                    : -1;
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            break;
        }
        if (fd >= 0) {
            close(fd);
        }
        if (bench_now_ns() > deadline) {
            fprintf(stderr, "bench: the agent did not start\n");
            return -1;
        }
        bench_sleep_ms(5);
    }
    return bcli_open(c, b->sock);
}

static void agent_stop(struct bench *b)
{
    if (b->agent_pid > 0) {
        (void)kill(b->agent_pid, SIGTERM);
        while (waitpid(b->agent_pid, NULL, 0) < 0 && errno == EINTR) {
        }
        b->agent_pid = -1;
    }
}

/* Wait for the response to @rid, skipping everything else. Returns 1, or -1 (printed). */
static int wait_response(struct bcli *c, uint32_t rid, struct sbx_msg *m, const char *what)
{
    for (;;) {
        if (bcli_recv(c, m, true) != 1) {
            return -1;
        }
        if (m->kind == SBX_MSG_RESPONSE && m->id == rid) {
            if (m->error != NULL) {
                struct sbx_err e;
                sbx_err_from_obj(m->error, &e);
                fprintf(stderr, "bench: %s: %s: %s\n", what, e.code, e.msg);
                return -1;
            }
            return 1;
        }
    }
}

/* --- eval round trip ------------------------------------------------------------------------ */

struct lang {
    const char *name;
    const char *code; /* the trivial expression */
    /* A local read-eval-print loop: one line in, one line out, for the baseline. */
    const char *const local[6];
    const char *local_line;
};

static const struct lang langs[] = {
    { "sh",
      ": $((1+1))",
      { "sh", "-c", "while IFS= read -r l; do eval \"$l\"; echo \"$?\"; done", NULL },
      ": $((1+1))\n" },
    { "bash",
      ": $((1+1))",
      { "bash", "--norc", "-c", "while IFS= read -r l; do eval \"$l\"; echo \"$?\"; done", NULL },
      ": $((1+1))\n" },
    { "python3",
      "1+1",
      { "python3", "-u", "-c",
        "import sys\nfor l in sys.stdin:\n    sys.stdout.write(repr(eval(l)) + '\\n')", NULL },
      "1+1\n" },
    { "node",
      "1+1",
      { "node", "-e",
        "const vm = require('vm'), util = require('util');"
        "require('readline').createInterface({ input: process.stdin }).on('line', (l) => "
        "process.stdout.write(util.inspect(vm.runInThisContext(l)) + '\\n'));",
        NULL },
      "1+1\n" },
};

static bool have(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[4096];

    for (const char *p = path != NULL ? path : "/usr/bin:/bin"; *p != '\0';) {
        size_t n = strcspn(p, ":");
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, prog);
        if (access(buf, X_OK) == 0) {
            return true;
        }
        p += n + (p[n] == ':');
    }
    return false;
}

/* One repl.eval of @code; @us is the round trip. */
static int eval_once(struct bcli *c, uint32_t session, const char *code, double *us)
{
    uint32_t rid;
    msgpack_packer *pk = bcli_begin_request(c, "repl.eval", &rid);
    uint64_t t0 = bench_now_ns();
    struct sbx_msg m;

    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "session", session);
    sbx_pack_kv_str(pk, "code", code);
    if (bcli_send(c) < 0 || wait_response(c, rid, &m, "repl.eval") < 0) {
        return -1;
    }
    *us = (double)(bench_now_ns() - t0) / 1e3;
    {
        const msgpack_object *e = sbx_obj_get(m.result, "error");
        if (e == NULL || e->type != MSGPACK_OBJECT_BOOLEAN || e->via.boolean) {
            fprintf(stderr, "bench: eval of \"%s\" failed\n", code);
            return -1;
        }
    }
    return 0;
}

/* The local loop: write a line, read until its answer line. */
static int local_once(int to, int from, const char *line, double *us)
{
    char buf[256];
    uint64_t t0 = bench_now_ns();
    size_t n = strlen(line);

    if (write(to, line, n) != (ssize_t)n) {
        return -1;
    }
    for (;;) {
        ssize_t r = read(from, buf, sizeof(buf));
        if (r <= 0) {
            return -1;
        }
        if (buf[r - 1] == '\n') {
            break;
        }
    }
    *us = (double)(bench_now_ns() - t0) / 1e3;
    return 0;
}

static int bench_lang(struct bench *b, struct bcli *c, const struct lang *l)
{
    int n = b->runs, warm = 20, in[2] = { -1, -1 }, out[2] = { -1, -1 }, rc = -1;
    double *ag = calloc((size_t)n, sizeof(double)), *lo = calloc((size_t)n, sizeof(double));
    uint64_t t0 = bench_now_ns();
    double start_ms;
    uint32_t rid, session;
    msgpack_packer *pk;
    struct sbx_msg m;
    pid_t pid = -1;

    if (ag == NULL || lo == NULL || pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
        goto out;
    }
    pk = bcli_begin_request(c, "repl.start", &rid);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_str(pk, "language", l->name);
    if (bcli_send(c) < 0 || wait_response(c, rid, &m, "repl.start") < 0) {
        goto out;
    }
    start_ms = (double)(bench_now_ns() - t0) / 1e6;
    session = bcli_u32(m.result, "session", 0);
    pid = bench_spawn(l->local, in[0], out[1], out[1]);
    if (pid < 0) {
        goto out;
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    for (int i = -warm; i < n; i++) {
        double x, y;
        /* Alternate the order so drift falls on both sides. */
        if ((i & 1) ? (local_once(in[1], out[0], l->local_line, &y) < 0 ||
                       eval_once(c, session, l->code, &x) < 0)
                    : (eval_once(c, session, l->code, &x) < 0 ||
                       local_once(in[1], out[0], l->local_line, &y) < 0)) {
            goto out;
        }
        if (i >= 0) {
            ag[i] = x;
            lo[i] = y;
        }
    }
    {
        double a50 = bench_percentile(ag, (size_t)n, 0.5),
               a90 = bench_percentile(ag, (size_t)n, 0.9);
        double l50 = bench_percentile(lo, (size_t)n, 0.5);
        bool target = strcmp(l->name, "python3") == 0 || strcmp(l->name, "node") == 0;
        char what[128], fig[48], spread[80], bl[96], rt[32];
        snprintf(what, sizeof(what), "repl: eval `%s` round trip, %s", l->code, l->name);
        snprintf(fig, sizeof(fig), "p50 %.0f µs", a50);
        snprintf(spread, sizeof(spread), "p90 %.0f µs, min %.0f (n=%d); start %.0f ms", a90, ag[0],
                 n, start_ms);
        snprintf(bl, sizeof(bl), "local %s loop over pipes p50 %.0f µs", l->name, l50);
        snprintf(rt, sizeof(rt), "%.2f×", a50 / l50);
        bench_row(what, fig, spread, bl, rt, target ? "p50 ≤ 2 ms" : "-",
                  target ? (a50 <= 2000 ? "yes" : "NO") : "-");
    }
    pk = bcli_begin_request(c, "repl.close", &rid);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "session", session);
    rc = bcli_send(c) < 0 || wait_response(c, rid, &m, "repl.close") < 0 ? -1 : 0;
out:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0) {
            close(in[i]);
        }
        if (out[i] >= 0) {
            close(out[i]);
        }
    }
    if (pid > 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
    free(ag);
    free(lo);
    return rc;
}

static int bench_eval(struct bench *b)
{
    struct bcli c;
    int rc = 0;

    if (agent_start(b, &c) < 0) {
        agent_stop(b);
        return -1;
    }
    for (size_t i = 0; i < sizeof(langs) / sizeof(langs[0]); i++) {
        if (!have(langs[i].local[0])) {
            bench_note("eval: %s not installed, skipped", langs[i].name);
            continue;
        }
        bench_note("eval: %s, 20 warm-up + %d runs each of agent/local", langs[i].name, b->runs);
        if (bench_lang(b, &c, &langs[i]) < 0) {
            rc = -1;
        }
    }
    bcli_close(&c);
    agent_stop(b);
    return rc;
}

/* --- PTY vs pipe output ---------------------------------------------------------------------- */

/* Flood b->bytes through the agent with or without a PTY; @bps is input bytes per second. */
static int flood_once(struct bench *b, struct bcli *c, bool pty, double *bps)
{
    char n[32];
    uint32_t rid, sid = 0, pid_id = 0, grant = c->window / 4;
    uint64_t got = 0, consumed = 0, t0;
    msgpack_packer *pk;
    struct sbx_msg m;

    snprintf(n, sizeof(n), "%llu", (unsigned long long)b->bytes);
    t0 = bench_now_ns();
    pk = bcli_begin_request(c, "proc.spawn", &rid);
    (void)msgpack_pack_map(pk, pty ? 3 : 4);
    sbx_pack_cstr(pk, "argv");
    (void)msgpack_pack_array(pk, 3);
    sbx_pack_cstr(pk, b->helper_bin);
    sbx_pack_cstr(pk, "flood");
    sbx_pack_cstr(pk, n);
    sbx_pack_kv_str(pk, "stdin", "null");
    if (pty) {
        sbx_pack_cstr(pk, "pty");
        (void)msgpack_pack_map(pk, 0);
    } else {
        sbx_pack_kv_str(pk, "stdout", "pipe");
        sbx_pack_kv_str(pk, "stderr", "null");
    }
    if (bcli_send(c) < 0) {
        return -1;
    }
    for (;;) {
        if (bcli_recv(c, &m, true) != 1) {
            return -1;
        }
        if (m.kind == SBX_MSG_DATA && m.stream == sid) {
            got += m.data_len;
            consumed += m.data_len;
            if (consumed >= grant) {
                if (bcli_credit(c, sid, (uint32_t)consumed) < 0) {
                    return -1;
                }
                consumed = 0;
            }
        } else if (m.kind == SBX_MSG_RESPONSE && m.id == rid) {
            if (m.error != NULL) {
                fprintf(stderr, "bench: proc.spawn flood failed\n");
                return -1;
            }
            sid = bcli_u32(m.result, "stdout", 0);
            pid_id = bcli_u32(m.result, "id", 0);
        } else if (pid_id != 0 && m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, "proc.exit") &&
                   bcli_u32(m.params, "id", 0) == pid_id) {
            break;
        }
    }
    *bps = (double)b->bytes * 1e9 / (double)(bench_now_ns() - t0);
    /* A PTY turns "\n" into "\r\n" (ONLCR): more bytes arrive than were written, never fewer. */
    if (got < b->bytes) {
        fprintf(stderr, "bench: received %llu of %llu bytes\n", (unsigned long long)got,
                (unsigned long long)b->bytes);
        return -1;
    }
    pk = bcli_begin_request(c, "proc.release", &rid);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "id", pid_id);
    return bcli_send(c) < 0 || wait_response(c, rid, &m, "proc.release") < 0 ? -1 : 0;
}

/* The kernel's PTY without the agent: the flood read from the master by this process. */
static int local_pty_once(struct bench *b, uint8_t *buf, double *bps)
{
    char n[32], path[64];
    const char *argv[] = { b->helper_bin, "flood", n, NULL };
    uint64_t t0 = bench_now_ns();
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), s;
    pid_t pid;

    snprintf(n, sizeof(n), "%llu", (unsigned long long)b->bytes);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, path, sizeof(path)) != 0 ||
        (s = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
        if (m >= 0) {
            close(m);
        }
        return -1;
    }
    pid = bench_spawn(argv, -1, s, s);
    close(s);
    if (pid < 0) {
        close(m);
        return -1;
    }
    while (read(m, buf, 1 << 16) > 0) { /* EIO once the last slave holder is gone */
    }
    close(m);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    *bps = (double)b->bytes * 1e9 / (double)(bench_now_ns() - t0);
    return 0;
}

static int bench_pty(struct bench *b)
{
    double local[MAX_REPS];
    uint8_t *buf = malloc(1 << 16);
    double pty[MAX_REPS], pipe[MAX_REPS], ratio[MAX_REPS];
    struct bench_stat sp, sq, sr;
    char fig[48], spread[64], bl[64], rt[48];
    struct bcli c;
    int rc = -1;

    if (agent_start(b, &c) < 0) {
        goto out;
    }
    bench_note("pty: %d × %llu bytes each through a PTY and a pipe", b->reps,
               (unsigned long long)b->bytes);
    for (int i = 0; i < b->reps; i++) {
        if ((i & 1)
                ? (flood_once(b, &c, false, &pipe[i]) < 0 || flood_once(b, &c, true, &pty[i]) < 0)
                : (flood_once(b, &c, true, &pty[i]) < 0 ||
                   flood_once(b, &c, false, &pipe[i]) < 0)) {
            goto close;
        }
        ratio[i] = pty[i] / pipe[i];
        if (buf == NULL || local_pty_once(b, buf, &local[i]) < 0) {
            goto close;
        }
    }
    sp = bench_stat_of(pty, (size_t)b->reps);
    sq = bench_stat_of(pipe, (size_t)b->reps);
    sr = bench_stat_of(ratio, (size_t)b->reps);
    bench_fmt_gbps(fig, sizeof(fig), sp.med);
    bench_fmt_spread(spread, sizeof(spread), &sp, 1e9, "GB/s");
    bench_fmt_gbps(bl, sizeof(bl), sq.med);
    snprintf(rt, sizeof(rt), "%.0f %% of the pipe path", sr.med * 100);
    bench_row("pty: flood through a PTY (agent -> client, credit as consumed)", fig, spread, bl, rt,
              "-", "-");
    sp = bench_stat_of(local, (size_t)b->reps);
    bench_fmt_gbps(fig, sizeof(fig), sp.med);
    bench_fmt_spread(spread, sizeof(spread), &sp, 1e9, "GB/s");
    bench_row("info: the same flood read from a PTY master by the bench itself (no agent)", fig,
              spread, "", "", "-", "-");
    rc = 0;
close:
    bcli_close(&c);
out:
    agent_stop(b);
    free(buf);
    return rc;
}

/* --- an idle REPL's background output -----------------------------------------------------------
 */

/* The agent's CPU (share of one core) over @ms, @settle_ms after now. */
static double agent_cpu_over(struct bench *b, long settle_ms, long ms)
{
    double c0;
    uint64_t t0;

    bench_sleep_ms(settle_ms);
    c0 = bench_proc_cpu_s(b->agent_pid);
    t0 = bench_now_ns();
    bench_sleep_ms(ms);
    return (bench_proc_cpu_s(b->agent_pid) - c0) / ((double)(bench_now_ns() - t0) / 1e9);
}

/* One run: @repl, an sh REPL left idle after `yes &`; else a `yes` spawned by a connection that
 * then goes (nobody reads its output). */
static int idle_once(struct bench *b, bool repl, long ms, double *cpu)
{
    static const char *const yes[] = { "yes", NULL };
    struct bcli c, a;
    struct sbx_msg m;
    uint32_t rid;
    double us;
    int rc = -1;

    if (agent_start(b, &c) < 0) {
        goto stop;
    }
    if (repl) {
        msgpack_packer *pk = bcli_begin_request(&c, "repl.start", &rid);
        (void)msgpack_pack_map(pk, 1);
        sbx_pack_kv_str(pk, "language", "sh");
        if (bcli_send(&c) < 0 || wait_response(&c, rid, &m, "repl.start") < 0 ||
            eval_once(&c, bcli_u32(m.result, "session", 0), "yes &", &us) < 0) {
            goto close;
        }
    } else {
        if (bcli_open(&a, b->sock) < 0) {
            goto close;
        }
        rid = bcli_spawn(&a, yes, "null", "pipe", "null", 0);
        if (rid == 0 || wait_response(&a, rid, &m, "proc.spawn") < 0) {
            bcli_close(&a);
            goto close;
        }
        bcli_close(&a); /* nobody holds the output now */
    }
    *cpu = agent_cpu_over(b, 1000, ms);
    rc = 0;
close:
    bcli_close(&c);
stop:
    agent_stop(b); /* `yes` dies of EPIPE with it */
    return rc;
}

static int bench_idle(struct bench *b)
{
    double r[MAX_REPS], d[MAX_REPS], ratio[MAX_REPS];
    long ms = b->reps <= 3 ? 2000 : 3000;
    struct bench_stat sr, sd, sx;
    char fig[48], spread[64], bl[64], rt[32];

    bench_note("idle: %d × %ld ms of agent CPU with an idle REPL's `yes &`, and with a detached "
               "`yes`",
               b->reps, ms);
    for (int i = 0; i < b->reps; i++) {
        if (idle_once(b, true, ms, &r[i]) < 0 || idle_once(b, false, ms, &d[i]) < 0) {
            return -1;
        }
        ratio[i] = d[i] > 0 ? r[i] / d[i] : 0;
    }
    sr = bench_stat_of(r, (size_t)b->reps);
    sd = bench_stat_of(d, (size_t)b->reps);
    sx = bench_stat_of(ratio, (size_t)b->reps);
    snprintf(fig, sizeof(fig), "%.1f %% of a core", sr.med * 100);
    snprintf(spread, sizeof(spread), "min %.1f %%, max %.1f %%", sr.min * 100, sr.max * 100);
    snprintf(bl, sizeof(bl), "detached `yes`: %.1f %% of a core", sd.med * 100);
    snprintf(rt, sizeof(rt), "%.2f×", sx.med);
    bench_row("idle: agent CPU while an idle sh REPL's `yes &` writes to its stdout", fig, spread,
              bl, rt, "≤ 2× detached", sx.med <= 2.0 ? "yes" : "NO");
    return 0;
}

/* --- main ----------------------------------------------------------------------------------- */

static const char *sibling(const char *argv0, const char *rel, char *buf, size_t n)
{
    const char *slash = strrchr(argv0, '/');
    int dlen = slash != NULL ? (int)(slash - argv0) : 1;

    snprintf(buf, n, "%.*s/%s", dlen, slash != NULL ? argv0 : ".", rel);
    return buf;
}

int main(int argc, char **argv)
{
    static char abuf[4096], hbuf[4096];
    struct bench b;
    const char *only = "eval,pty,idle";
    int rc = 0;

    memset(&b, 0, sizeof(b));
    b.agent_bin = sibling(argv[0], "../bin/sbx-agent", abuf, sizeof(abuf));
    b.helper_bin = sibling(argv[0], "../tests/sbx-test-helper", hbuf, sizeof(hbuf));
    b.runs = 300;
    b.reps = 5;
    b.bytes = 128ull << 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            b.runs = 100;
            b.reps = 3;
            b.bytes = 32ull << 20;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--agent") == 0 && i + 1 < argc) {
            b.agent_bin = argv[++i];
        } else if (strcmp(argv[i], "--helper") == 0 && i + 1 < argc) {
            b.helper_bin = argv[++i];
        } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
            b.runs = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
            b.bytes = strtoull(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench_repl [--quick] [--only eval,pty,idle] [--agent PATH] "
                            "[--helper PATH] [--runs N] [--bytes N]\n");
            return 2;
        }
    }
    if (b.runs < 1 || b.bytes == 0) {
        fprintf(stderr, "bench_repl: --runs and --bytes must be positive\n");
        return 2;
    }
    snprintf(b.dir, sizeof(b.dir), "/tmp/sbx-bench-repl-XXXXXX");
    if (mkdtemp(b.dir) == NULL) {
        perror("bench_repl: mkdtemp");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (strstr(only, "eval") != NULL && bench_eval(&b) < 0) {
        rc = 1;
    }
    if (strstr(only, "pty") != NULL && bench_pty(&b) < 0) {
        rc = 1;
    }
    if (strstr(only, "idle") != NULL && bench_idle(&b) < 0) {
        rc = 1;
    }
    (void)unlink(b.sock);
    (void)rmdir(b.dir);
    return rc;
}
