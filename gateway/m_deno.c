/*
 * The SDK's Deno runtime and REPL (docs/GATEWAY.md "Deno runtime and REPL"):
 *
 *   spawnDeno      proc.spawn of `deno run -A [--watch[=paths] --no-clear-screen] FILE ARGS...`
 *                  (gw_proc_spawn, as `spawn`); inline `code` is written first to FILE =
 *                  <fs.mktemp directory, mode 0700, the session's user>/main.<extension>.
 *                  With `watch`, stderr passes through unchanged while lines "Watcher ...
 *                  Restarting!" are also told as $sandbox.deno.watcher.restart.
 *   denoHttpWait   proc.list for the process's guest pid, then net.listening and a proc.wait
 *                  with a timeout (100 ms, 1 s after 5 s) in turn: true once a TCP socket in
 *                  LISTEN is held by that pid or a descendant (parents read from
 *                  /proc/PID/stat), false once the process has exited.
 *   spawnDenoRepl  repl.start {language: "deno", env, clear_env, cwd, user}; the SDK's pid is the
 *                  interpreter's agent process id (repl.start's `proc`), so processWait and
 *                  processKill work on it. The two SDK streams opened here carry each eval's
 *                  output; a proc.wait kept in flight ends them when the interpreter exits.
 *   denoReplEval   repl.eval {format: "json"}: the value as JSON, an exception as its own
 *   denoReplCall   ErrorObject {constructorName, message, stack}; a call is the eval of
 *                  `(fn)(...args)`.
 *   denoReplClose  repl.close.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m_proc.h"
#include "sbx/msg.h"
#include "sbx/schema.h"

#include <nettle/base64.h>

/* fs.write chunk for inline code (under any agent's chunk_max). */
#define DN_WRITE_CHUNK (64u << 10)
/* denoHttpWait: poll every 100 ms for the first 50 rounds (5 s), then every second. */
#define DN_POLL_FAST_MS   100u
#define DN_POLL_SLOW_MS   1000u
#define DN_POLL_FAST_N    50u
#define DN_WATCH_LINE_MAX 256u

/* --- helpers -------------------------------------------------------------------------------- */

static bool obj_u32(const msgpack_object *map, const char *key, uint32_t *out)
{
    const msgpack_object *v = sbx_obj_get(map, key);

    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)v->via.u64;
    return true;
}

/* A str/bin field as a NUL-terminated copy (NULL when absent, nil or out of memory). */
static char *obj_strdup(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = sbx_obj_get(map, key);
    const char *p;
    size_t n;
    char *s;

    if (v == NULL || !sbx_obj_bytes(v, &p, &n) || (s = malloc(n + 1)) == NULL) {
        return NULL;
    }
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* The agent's NOT_FOUND for a process or REPL is the SDK's ENOENT. */
static void fail_gone(struct gw_call *call, const struct sbx_err *e, int64_t pid)
{
    if (e == NULL || strcmp(e->code, SBX_E_NOT_FOUND) == 0) {
        gw_call_fail(call, "NotFound", "ENOENT", "%s: no such process: %lld", call->method,
                     (long long)pid);
        return;
    }
    gw_call_fail_sbx(call, e, call->method, NULL);
}

/* The agent connection for a follow-up request made from an answer, or NULL having failed the
 * call (the agent link ended: every request in flight was failed with EOF). */
static struct sbx_conn *live_conn(struct gw_call *call)
{
    struct sbx_conn *c = gw_session_conn(call->s);

    if (c == NULL) {
        gw_call_fail(call, "Error", "ECONNRESET", "%s: the sandbox's agent is not connected",
                     call->method);
    }
    return c;
}

static int pid_param(struct gw_call *call, json_t *params, int64_t *pid)
{
    return gw_param_int(call, params, "pid", true, 0, UINT32_MAX, 0, pid);
}

/* --- spawnDeno ------------------------------------------------------------------------------ */

struct dn_run {
    struct gw_session *s;
    const char *entry, *code, *ext; /* into the call's params */
    size_t code_len;
    const char **script_args;
    size_t nargs;
    char *watch_flag; /* "--watch" or "--watch=a,b"; NULL: no watch */
    char *dir;        /* inline code: the temp directory, then the file */
    char *file;
    uint32_t fh;
    size_t off;
    const char **argv;
    json_t *params;
    struct dn_watch *watch; /* NULL: no restart events */
};

/* The stderr scan of a --watch runtime. It must outlive the stderr stream, which has no end hook
 * of its own: it is freed with the session (a cancel hook on an SDK stream id nobody uses). */
struct dn_watch {
    struct gw_session *s;
    char id[32]; /* the watcherId */
    char line[DN_WATCH_LINE_MAX];
    size_t line_len;
    int esc; /* 0: text; 1: after ESC; 2: in a CSI sequence */
};

static void run_free(void *p)
{
    struct dn_run *st = p;

    free(st->watch_flag);
    free(st->dir);
    free(st->file);
    free(st->argv);
    free(st);
}

/* One stderr line of a --watch runtime: deno's "Watcher File change detected! Restarting!"
 * (colours stripped) is a restart. */
static void watch_line(struct dn_watch *st)
{
    st->line[st->line_len] = '\0';
    if (strncmp(st->line, "Watcher", 7) == 0 && strstr(st->line, "Restarting!") != NULL) {
        gw_session_notify(st->s, "$sandbox.deno.watcher.restart",
                          json_pack("{s:s}", "watcherId", st->id));
    }
    st->line_len = 0;
}

static int watch_xform(struct gw_ostream *os, const uint8_t *data, size_t len, void *user)
{
    struct dn_watch *st = user;

    gw_ostream_enqueue(os, data, len); /* the SDK gets stderr as it is */
    for (size_t i = 0; i < len; i++) {
        uint8_t b = data[i];

        if (st->esc == 1) {
            st->esc = b == '[' ? 2 : 0;
        } else if (st->esc == 2) {
            st->esc = b >= 0x40 && b <= 0x7e ? 0 : 2;
        } else if (b == 0x1b) {
            st->esc = 1;
        } else if (b == '\n') {
            watch_line(st);
        } else if (b != '\r' && st->line_len < sizeof(st->line) - 1) {
            st->line[st->line_len++] = (char)b;
        }
    }
    return 0;
}

static void run_spawned(struct gw_call *call, const struct sbx_spawn_result *r, json_t *result,
                        void *user)
{
    struct dn_run *st = user;

    (void)call;
    if (st->watch_flag == NULL || st->watch == NULL) {
        json_object_set_new(result, "watcherId", json_null());
        return;
    }
    snprintf(st->watch->id, sizeof(st->watch->id), "watcher-%u", r->id);
    json_object_set_new(result, "watcherId", json_string(st->watch->id));
}

/* The restart scan for a --watch runtime (NULL: out of memory, no restart events). */
static struct dn_watch *watch_new(struct gw_session *s)
{
    struct dn_watch *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        return NULL;
    }
    w->s = s;
    /* Freed with the session: the relays write into it until then (a hook on a stream id of
     * its own let a client's cancel of that id free it under them). */
    if (gw_session_on_end(s, free, w) < 0) {
        free(w);
        return NULL;
    }
    return w;
}

static void run_spawn(struct gw_call *call, struct dn_run *st, const char *file)
{
    struct gw_spawn_ext ext = { run_spawned, st, NULL, NULL };
    size_t k = 0;

    st->argv = calloc(st->nargs + 8, sizeof(*st->argv));
    if (st->argv == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "spawnDeno: out of memory");
        return;
    }
    st->argv[k++] = "deno";
    st->argv[k++] = "run";
    st->argv[k++] = "-A"; /* what the hosted service effectively gives (docs/GATEWAY.md) */
    if (st->watch_flag != NULL) {
        st->argv[k++] = st->watch_flag;
        st->argv[k++] = "--no-clear-screen";
        st->watch = watch_new(call->s);
        ext.err_xform = st->watch != NULL ? watch_xform : NULL;
        ext.xform_user = st->watch;
    }
    st->argv[k++] = file;
    for (size_t i = 0; i < st->nargs; i++) {
        st->argv[k++] = st->script_args[i];
    }
    gw_proc_spawn(call, st->params, st->argv, &ext);
}

static void code_step(struct gw_call *call);

static void code_closed(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_run *st = call->data;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "spawnDeno", st->file);
        return;
    }
    if (live_conn(call) == NULL) {
        return;
    }
    call->data = NULL; /* gw_proc_spawn's from here */
    run_spawn(call, st, st->file);
}

static void code_written(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_run *st = call->data;
    uint32_t n;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "spawnDeno", st->file);
        return;
    }
    if (!obj_u32(ev->result, "written", &n) || n == 0) {
        gw_call_fail(call, "Error", "EIO", "spawnDeno: short write to '%s'", st->file);
        return;
    }
    st->off += n;
    code_step(call);
}

/* Write the next chunk of the code, or close the file once all of it is out. */
static void code_step(struct gw_call *call)
{
    struct dn_run *st = call->data;
    struct sbx_conn *c = live_conn(call);
    struct sbx_err err;
    int rc;

    if (c == NULL) {
        return;
    }
    if (st->off < st->code_len) {
        size_t n = st->code_len - st->off;
        uint64_t at = st->off;

        rc = sbx_fs_write(c, st->fh, st->code + st->off, n < DN_WRITE_CHUNK ? n : DN_WRITE_CHUNK,
                          &at, gw_call_expect(call, code_written), NULL, &err);
    } else {
        rc = sbx_fs_close(c, st->fh, gw_call_expect(call, code_closed), NULL, &err);
    }
    if (rc < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "spawnDeno", st->file);
        return;
    }
    gw_session_flush(call->s);
}

static void code_opened(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_run *st = call->data;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "spawnDeno", st->file);
        return;
    }
    if (!obj_u32(ev->result, "fh", &st->fh)) {
        gw_call_fail(call, "Error", "EIO", "spawnDeno: fs.open gave no handle");
        return;
    }
    code_step(call);
}

static void code_dir(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_run *st = call->data;
    const msgpack_object *path;
    const char *p;
    size_t n;
    struct sbx_err err;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "spawnDeno", NULL);
        return;
    }
    if (live_conn(call) == NULL) {
        return;
    }
    /* A result without a usable path (the agent's to send) is no directory to write in: told as
     * such, not as the lack of memory obj_strdup's NULL would mean below. */
    path = sbx_obj_get(ev->result, "path");
    if (path == NULL || !sbx_obj_bytes(path, &p, &n) || n == 0 || memchr(p, '\0', n) != NULL) {
        gw_call_fail(call, "InvalidData", NULL, "spawnDeno: fs.mktemp gave no directory");
        return;
    }
    st->dir = obj_strdup(ev->result, "path");
    if (st->dir == NULL || asprintf(&st->file, "%s/main.%s", st->dir, st->ext) < 0) {
        st->file = NULL;
        gw_call_fail(call, "Error", "ENOMEM", "spawnDeno: out of memory");
        return;
    }
    if (sbx_fs_open(gw_session_conn(call->s), st->file, /* live: checked above */
                    SBX_FS_O_WRITE | SBX_FS_O_CREATE | SBX_FS_O_EXCLUSIVE, 0600, NULL,
                    gw_call_expect(call, code_opened), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "spawnDeno", st->file);
        return;
    }
    gw_session_flush(call->s);
}

static const char *const deno_exts[] = { "js", "cjs", "mjs", "ts", "cts", "mts", "jsx", "tsx" };

/* watch: true/false/null, or the extra paths to watch (deno's --watch=a,b). */
static int watch_param(struct gw_call *call, json_t *params, struct dn_run *st)
{
    json_t *w = json_object_get(params, "watch"), *e;
    size_t i, n, len = 9; /* "--watch=" and the NUL */
    const char **paths;

    if (w == NULL || json_is_null(w) || json_is_false(w)) {
        return 0;
    }
    if (json_is_true(w)) {
        st->watch_flag = strdup("--watch");
        goto out;
    }
    if (gw_param_strv(call, params, "watch", &paths, &n) < 0) {
        return -1;
    }
    json_array_foreach(w, i, e)
    {
        if (json_string_length(e) == 0 || strchr(json_string_value(e), ',') != NULL) {
            gw_call_fail(call, "TypeError", NULL,
                         "spawnDeno: watch paths must be non-empty and without ','");
            return -1;
        }
        len += json_string_length(e) + 1;
    }
    st->watch_flag = malloc(len + 1);
    if (st->watch_flag != NULL) {
        char *p = st->watch_flag + sprintf(st->watch_flag, "--watch");

        json_array_foreach(w, i, e)
        {
            p += sprintf(p, "%c%s", i == 0 ? '=' : ',', json_string_value(e));
        }
    }
out:
    if (st->watch_flag == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "spawnDeno: out of memory");
        return -1;
    }
    return 0;
}

void gw_m_spawn_deno(struct gw_call *call, json_t *params)
{
    struct dn_run *st = calloc(1, sizeof(*st));
    struct sbx_err err;
    bool known = false;

    if (st == NULL || gw_call_keep(call, st, run_free) < 0) {
        free(st);
        gw_call_fail(call, "Error", "ENOMEM", "spawnDeno: out of memory");
        return;
    }
    st->s = call->s;
    st->params = params;
    if (gw_param_str(call, params, "entrypoint", false, &st->entry) < 0 ||
        gw_param_str(call, params, "code", false, &st->code) < 0 ||
        gw_param_str(call, params, "extension", false, &st->ext) < 0 ||
        gw_param_strv(call, params, "scriptArgs", &st->script_args, &st->nargs) < 0 ||
        watch_param(call, params, st) < 0) {
        return;
    }
    if ((st->entry == NULL) == (st->code == NULL)) {
        gw_call_fail(call, "TypeError", NULL, "spawnDeno: give either entrypoint or code");
        return;
    }
    if (st->entry != NULL) {
        if (st->entry[0] == '\0') {
            gw_call_fail(call, "TypeError", NULL, "spawnDeno: entrypoint must not be empty");
            return;
        }
        run_spawn(call, st, st->entry);
        return;
    }
    if (st->watch_flag != NULL) {
        gw_call_fail(call, "TypeError", NULL, "spawnDeno: watch needs an entrypoint, not code");
        return;
    }
    if (st->ext == NULL) {
        st->ext = "ts"; /* the SDK's default */
    }
    for (size_t i = 0; i < sizeof(deno_exts) / sizeof(deno_exts[0]); i++) {
        known = known || strcmp(st->ext, deno_exts[i]) == 0;
    }
    if (!known) {
        gw_call_fail(call, "TypeError", NULL,
                     "spawnDeno: extension must be js, cjs, mjs, ts, cts, mts, jsx or tsx");
        return;
    }
    st->code_len = json_string_length(json_object_get(params, "code"));
    call->data = st; /* borrowed until gw_proc_spawn takes call->data over */
    if (sbx_fs_mktemp(gw_session_conn(call->s), NULL, "sbx-deno-", NULL, true, NULL,
                      gw_call_expect(call, code_dir), NULL, &err) < 0) {
        gw_call_unexpect(call);
        call->data = NULL;
        gw_call_fail_sbx(call, &err, "spawnDeno", NULL);
        return;
    }
    gw_session_flush(call->s);
}

/* --- denoHttpWait --------------------------------------------------------------------------- */

/* Listening sockets of other pids whose ancestry is checked per round, and the depth of a walk. */
#define DN_CAND_MAX     16u
#define DN_DEPTH_MAX    32u
#define DN_NOT_DESC_MAX 64u

struct dn_wait {
    uint32_t pid;   /* the agent's process id (the SDK's pid) */
    uint32_t ospid; /* its guest pid */
    unsigned rounds;
    /* this round's holders of listening TCP sockets other than ospid, checked for descent */
    uint32_t cand[DN_CAND_MAX];
    unsigned ncand, ci;
    uint32_t cur;   /* the pid whose /proc/PID/stat is being read */
    unsigned depth; /* steps up from cand[ci] */
    uint32_t fh;
    uint32_t ppid; /* read from cur's stat; 0: none */
    /* pids whose ancestry reached init without ospid (kept across rounds; pid reuse within one
     * wait is ignored) */
    uint32_t not_desc[DN_NOT_DESC_MAX];
    unsigned nnot;
};

static void wait_poll(struct gw_call *call);
static void wait_sleep(struct gw_call *call);
static void wait_next_cand(struct gw_call *call);

static void wait_waited(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;

    if (ev->error == NULL || strcmp(ev->error->code, SBX_E_NOT_FOUND) == 0) {
        gw_call_ok(call, json_false()); /* exited (or released) before listening */
        return;
    }
    if (strcmp(ev->error->code, SBX_E_TIMEOUT) != 0) {
        gw_call_fail_sbx(call, ev->error, "denoHttpWait", NULL);
        return;
    }
    w->rounds++;
    wait_poll(call);
}

static bool wait_known_not(const struct dn_wait *w, uint32_t pid)
{
    for (unsigned i = 0; i < w->nnot; i++) {
        if (w->not_desc[i] == pid) {
            return true;
        }
    }
    return false;
}

static void wait_listening(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;
    const msgpack_object *socks;
    struct sbx_err err;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "denoHttpWait", NULL);
        return;
    }
    w->ncand = 0;
    socks = sbx_obj_get(ev->result, "sockets");
    for (uint32_t i = 0;
         socks != NULL && socks->type == MSGPACK_OBJECT_ARRAY && i < socks->via.array.size; i++) {
        struct sbx_listening l;
        bool dup = false;

        if (sbx_listening_read(&socks->via.array.ptr[i], &l, &err) < 0 || l.proto_len < 3 ||
            memcmp(l.proto, "tcp", 3) != 0 || !l.has_pid) {
            continue;
        }
        if (l.pid == w->ospid) {
            gw_call_ok(call, json_true());
            return;
        }
        for (unsigned k = 0; k < w->ncand; k++) {
            dup = dup || w->cand[k] == l.pid;
        }
        if (!dup && l.pid > 1 && w->ncand < DN_CAND_MAX && !wait_known_not(w, l.pid)) {
            w->cand[w->ncand++] = l.pid;
        }
    }
    w->ci = 0;
    w->depth = 0;
    if (w->ncand > 0) {
        w->cur = w->cand[0];
        wait_next_cand(call);
        return;
    }
    wait_sleep(call);
}

/* Descendants: walk each candidate's parents through /proc/PID/stat (fs.open, fs.read,
 * fs.close as --user; the file is world-readable) until ospid (true), init or a known
 * non-descendant. */
static void stat_closed(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;
    bool next = false;

    (void)ev;
    if (w->ppid == w->ospid) {
        gw_call_ok(call, json_true());
        return;
    }
    if (w->ppid <= 1 || w->depth + 1 >= DN_DEPTH_MAX || wait_known_not(w, w->ppid)) {
        if (w->nnot < DN_NOT_DESC_MAX) {
            w->not_desc[w->nnot++] = w->cand[w->ci];
        }
        next = true;
    } else {
        w->depth++;
        w->cur = w->ppid;
    }
    if (next) {
        if (++w->ci >= w->ncand) {
            wait_sleep(call);
            return;
        }
        w->depth = 0;
        w->cur = w->cand[w->ci];
    }
    wait_next_cand(call);
}

static void stat_read(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;
    const char *p, *rp;
    size_t n;
    struct sbx_err err;
    char buf[512];
    unsigned long ppid;

    w->ppid = 0;
    /* A result without `data` (the agent's to send) reads as no parent: sbx_obj_bytes takes a
     * missing field as absent. */
    if (ev->error == NULL && sbx_obj_bytes(sbx_obj_get(ev->result, "data"), &p, &n) && n > 0) {
        /* "pid (comm) S ppid ...": comm may hold spaces and parentheses; the last ')' ends it. */
        n = n < sizeof(buf) - 1 ? n : sizeof(buf) - 1;
        memcpy(buf, p, n);
        buf[n] = '\0';
        rp = strrchr(buf, ')');
        if (rp != NULL && sscanf(rp + 1, " %*c %lu", &ppid) == 1 && ppid <= UINT32_MAX) {
            w->ppid = (uint32_t)ppid;
        }
    }
    if (live_conn(call) == NULL) {
        return;
    }
    if (sbx_fs_close(gw_session_conn(call->s), w->fh, gw_call_expect(call, stat_closed), NULL,
                     &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", NULL);
    }
}

static void stat_opened(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;
    struct sbx_err err;

    if (ev->error != NULL || !obj_u32(ev->result, "fh", &w->fh)) {
        w->ppid = 0; /* gone meanwhile: not a descendant now */
        stat_closed(call, ev);
        return;
    }
    if (live_conn(call) == NULL) {
        return;
    }
    if (sbx_fs_read(gw_session_conn(call->s), w->fh, 511, NULL, gw_call_expect(call, stat_read),
                    NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", NULL);
    }
}

static void wait_next_cand(struct gw_call *call)
{
    struct dn_wait *w = call->data;
    struct sbx_err err;
    char path[32];

    if (live_conn(call) == NULL) {
        return;
    }
    snprintf(path, sizeof(path), "/proc/%u/stat", w->cur);
    if (sbx_fs_open(gw_session_conn(call->s), path, SBX_FS_O_READ, -1, NULL,
                    gw_call_expect(call, stat_opened), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", path);
        return;
    }
    gw_session_flush(call->s);
}

/* Not listening yet: wait for the process's exit at most one poll interval. */
static void wait_sleep(struct gw_call *call)
{
    struct dn_wait *w = call->data;
    struct sbx_err err;

    if (live_conn(call) == NULL) {
        return;
    }
    if (sbx_proc_wait(gw_session_conn(call->s), w->pid,
                      w->rounds < DN_POLL_FAST_N ? DN_POLL_FAST_MS : DN_POLL_SLOW_MS,
                      gw_call_expect(call, wait_waited), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", NULL);
        return;
    }
    gw_session_flush(call->s);
}

static void wait_poll(struct gw_call *call)
{
    struct sbx_err err;

    if (live_conn(call) == NULL) {
        return;
    }
    if (sbx_net_listening(gw_session_conn(call->s), gw_call_expect(call, wait_listening), NULL,
                          &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", NULL);
        return;
    }
    gw_session_flush(call->s);
}

static void wait_listed(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_wait *w = call->data;
    const msgpack_object *procs;

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "denoHttpWait", NULL);
        return;
    }
    procs = sbx_obj_get(ev->result, "procs");
    for (uint32_t i = 0;
         procs != NULL && procs->type == MSGPACK_OBJECT_ARRAY && i < procs->via.array.size; i++) {
        const msgpack_object *e = &procs->via.array.ptr[i];
        const msgpack_object *state = sbx_obj_get(e, "state");
        uint32_t id;

        if (!obj_u32(e, "id", &id) || id != w->pid) {
            continue;
        }
        if (!obj_u32(e, "pid", &w->ospid) ||
            (state != NULL && state->type == MSGPACK_OBJECT_STR && state->via.str.size == 6 &&
             memcmp(state->via.str.ptr, "exited", 6) == 0)) {
            gw_call_ok(call, json_false());
            return;
        }
        wait_poll(call);
        return;
    }
    fail_gone(call, NULL, w->pid);
}

void gw_m_deno_http_wait(struct gw_call *call, json_t *params)
{
    struct dn_wait *w;
    struct sbx_err err;
    int64_t pid;

    if (pid_param(call, params, &pid) < 0) {
        return;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "denoHttpWait: out of memory");
        return;
    }
    w->pid = (uint32_t)pid;
    call->data = w;
    call->data_free = free;
    if (sbx_proc_list(gw_session_conn(call->s), gw_call_expect(call, wait_listed), NULL, &err) <
        0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "denoHttpWait", NULL);
        return;
    }
    gw_session_flush(call->s);
}

/* --- the REPL ------------------------------------------------------------------------------- */

/*
 * A REPL of a session: in the session's list (gw_session_repls) from repl.start's answer until its
 * interpreter has exited (the proc.wait the spawnDenoRepl call keeps in flight answers, or fails
 * with the session's end). Owned by that call.
 */
struct dn_repl {
    struct dn_repl *next;
    struct gw_session *s;
    uint32_t pid;     /* the interpreter's agent process id: the SDK's pid */
    uint32_t session; /* the agent's REPL session */
    uint64_t sdk[2];  /* the SDK's stdout and stderr streams; 0: none ("null") */
    bool cancelled[2];
    bool closed; /* repl.close answered */
    bool linked;
};

static struct dn_repl *repl_find(struct gw_session *s, uint32_t pid)
{
    for (struct dn_repl *r = *gw_session_repls(s); r != NULL; r = r->next) {
        if (r->pid == pid && !r->closed) {
            return r;
        }
    }
    return NULL;
}

static void repl_unlink(struct dn_repl *r)
{
    for (struct dn_repl **pp = gw_session_repls(r->s); *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    r->linked = false;
}

static void repl_out_cancel(void *user)
{
    struct dn_repl *r = user;

    r->cancelled[0] = true;
}

static void repl_err_cancel(void *user)
{
    struct dn_repl *r = user;

    r->cancelled[1] = true;
}

/* The interpreter exited (or the session ended): end the SDK's streams, forget the REPL. */
static void repl_gone(struct dn_repl *r)
{
    if (r->linked) {
        repl_unlink(r);
    }
    for (int i = 0; i < 2; i++) {
        if (r->sdk[i] != 0 && !r->cancelled[i]) {
            gw_session_off_cancel(r->s, r->sdk[i]);
            r->cancelled[i] = true;
            gw_session_notify(r->s, "$sandbox.stream.end",
                              json_pack("{s:I}", "streamId", (json_int_t)r->sdk[i]));
        }
    }
}

static void repl_exited(struct gw_call *call, const struct sbx_event *ev)
{
    (void)ev;
    repl_gone(call->data);
}

/* Bytes of an eval's stdout (@i 0) or stderr (1) onto the REPL's SDK stream. */
static void repl_relay(struct dn_repl *r, int i, const msgpack_object *o)
{
    const char *p;
    size_t n;
    char *b64;

    if (r == NULL || r->sdk[i] == 0 || r->cancelled[i] || o == NULL || !sbx_obj_bytes(o, &p, &n) ||
        n == 0) {
        return;
    }
    b64 = malloc(BASE64_ENCODE_RAW_LENGTH(n) + 1);
    if (b64 == NULL) {
        gw_log("denoRepl: out of memory relaying output");
        return;
    }
    base64_encode_raw(b64, n, (const uint8_t *)p);
    b64[BASE64_ENCODE_RAW_LENGTH(n)] = '\0';
    gw_session_notify(r->s, "$sandbox.stream.enqueue",
                      json_pack("{s:I, s:s}", "streamId", (json_int_t)r->sdk[i], "data", b64));
    free(b64);
}

static bool stdio_piped(struct gw_call *call, json_t *params, const char *key, bool *piped)
{
    const char *v;

    if (gw_param_str(call, params, key, false, &v) < 0) {
        return false;
    }
    if (v != NULL && strcmp(v, "null") != 0 && strcmp(v, "piped") != 0 &&
        strcmp(v, "inherit") != 0) {
        gw_call_fail(call, "TypeError", NULL, "spawnDenoRepl: %s must be \"piped\" or \"null\"",
                     key);
        return false;
    }
    *piped = v == NULL || strcmp(v, "null") != 0;
    return true;
}

static int discard_data(void *user, const uint8_t *data, size_t len)
{
    (void)user;
    (void)data;
    (void)len;
    return 0;
}

static void discard_end(void *user)
{
    (void)user;
}

static void discard_error(void *user, json_t *error)
{
    (void)user;
    (void)error;
}

static void repl_started(struct gw_call *call, const struct sbx_event *ev)
{
    struct dn_repl *r = call->data;
    struct gw *g = gw_session_sandbox(call->s)->g;
    static void (*const cancel_fn[2])(void *) = { repl_out_cancel, repl_err_cancel };
    struct sbx_err err;
    json_t *ids[2];

    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "spawnDenoRepl", NULL);
        return;
    }
    if (!obj_u32(ev->result, "session", &r->session) || !obj_u32(ev->result, "proc", &r->pid)) {
        gw_call_fail(call, "NotSupported", "ENOTSUP",
                     "spawnDenoRepl: the agent's repl.start gives no process id (agent too old)");
        return;
    }
    for (int i = 0; i < 2; i++) {
        ids[i] = json_null();
        if (r->sdk[i] != 0) {
            r->sdk[i] = gw_stream_id(g);
            if (gw_session_on_cancel(call->s, r->sdk[i], cancel_fn[i], r) < 0) {
                r->cancelled[i] = true;
            }
            gw_session_notify(call->s, "$sandbox.stream.start",
                              json_pack("{s:I}", "streamId", (json_int_t)r->sdk[i]));
            ids[i] = json_integer((json_int_t)r->sdk[i]);
        }
    }
    r->next = *gw_session_repls(r->s);
    *gw_session_repls(r->s) = r;
    r->linked = true;
    gw_call_ok(call, json_pack("{s:I, s:o, s:o}", "pid", (json_int_t)r->pid, "stdoutStreamId",
                               ids[0], "stderrStreamId", ids[1]));
    /* Answered; the call (and r) stays until the interpreter has exited. */
    if (gw_session_conn(call->s) == NULL) {
        repl_gone(r);
        return;
    }
    if (sbx_proc_wait(gw_session_conn(call->s), r->pid, 0, gw_call_expect(call, repl_exited), NULL,
                      &err) < 0) {
        gw_call_unexpect(call);
        gw_log("spawnDenoRepl: cannot follow process %u: %s", r->pid, err.msg);
        repl_gone(r);
    }
}

static void repl_free(void *p)
{
    struct dn_repl *r = p;

    if (r->linked) { /* never reached: repl_gone runs first */
        repl_unlink(r);
    }
    free(r);
}

void gw_m_spawn_deno_repl(struct gw_call *call, json_t *params)
{
    struct gw_session *s = call->s;
    struct sbx_conn *c = gw_session_conn(s);
    const char *cwd, *user = gw_session_user(s), **env, **args;
    size_t nargs;
    bool clear_env, piped[2];
    json_t *envo, *stdin_id, *v;
    const char *k;
    struct dn_repl *r;
    msgpack_packer *pk;
    struct sbx_err err;

    if (gw_proc_env_param(call, params, &env) < 0 ||
        gw_param_obj(call, params, "env", false, &envo) < 0 ||
        gw_param_bool(call, params, "clearEnv", false, &clear_env) < 0 ||
        gw_param_str(call, params, "cwd", false, &cwd) < 0 ||
        gw_param_strv(call, params, "scriptArgs", &args, &nargs) < 0 ||
        !stdio_piped(call, params, "stdout", &piped[0]) ||
        !stdio_piped(call, params, "stderr", &piped[1])) {
        return;
    }
    if (nargs > 0) {
        gw_call_fail(call, "NotSupported", "ENOTSUP",
                     "spawnDenoRepl: scriptArgs are not supported for the REPL by sbx-gateway");
        return;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL || gw_call_keep(call, r, repl_free) < 0) {
        free(r);
        gw_call_fail(call, "Error", "ENOMEM", "spawnDenoRepl: out of memory");
        return;
    }
    r->s = s;
    r->sdk[0] = piped[0]; /* nonzero: open a stream once started */
    r->sdk[1] = piped[1];
    call->data = r;
    /* The interpreter's stdin is the REPL's terminal: a stdin stream is taken and dropped. */
    stdin_id = json_object_get(params, "stdinStreamId");
    if (stdin_id != NULL && json_is_integer(stdin_id) && json_integer_value(stdin_id) >= 0) {
        struct gw_istream_sink sink = { discard_data, discard_end, discard_error, NULL };

        (void)gw_istream_claim(s, (uint64_t)json_integer_value(stdin_id), &sink);
    }
    pk = sbx_conn_begin(c, SBX_M_REPL_START, gw_call_expect(call, repl_started), NULL, &err);
    if (pk == NULL) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "spawnDenoRepl", NULL);
        return;
    }
    msgpack_pack_map(pk, 3 + (envo != NULL) + (user != NULL));
    sbx_pack_kv_str(pk, "language", "deno");
    sbx_pack_kv_bool(pk, "clear_env", clear_env);
    sbx_pack_kv_str(pk, "cwd", cwd != NULL ? cwd : gw_session_cwd(s));
    if (user != NULL) {
        sbx_pack_kv_str(pk, "user", user);
    }
    if (envo != NULL) {
        sbx_pack_cstr(pk, "env");
        msgpack_pack_map(pk, json_object_size(envo));
        json_object_foreach(envo, k, v)
        {
            sbx_pack_cstr(pk, k);
            sbx_pack_cstr(pk, json_string_value(v)); /* checked by gw_proc_env_param */
        }
    }
    if (sbx_conn_commit(c, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "spawnDenoRepl", NULL);
        return;
    }
    gw_session_flush(s);
}

/* An eval's answer: output to the REPL's streams, then the value or the exception. */
/*
 * A JSON text from the REPL as a value. JSON.stringify writes a lone UTF-16 surrogate as a \uD8xx
 * escape (valid JSON grammar, not valid Unicode), integers of any size and NUL escapes; jansson
 * refuses the first two, so such escapes become U+FFFD and big integers become reals, as
 * JavaScript numbers are. NULL with @jerr when it still is not JSON.
 */
static json_t *repl_json(const char *p, size_t n, json_error_t *jerr)
{
    size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL;
    json_t *j = json_loadb(p, n, flags, jerr);
    char *fixed;
    size_t o = 0;

    if (j != NULL) {
        return j;
    }
    if (strstr(jerr->text, "too big integer") != NULL) {
        return json_loadb(p, n, flags | JSON_DECODE_INT_AS_REAL, jerr);
    }
    if (strstr(jerr->text, "invalid Unicode") == NULL || (fixed = malloc(n + 1)) == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n;) {
        if (p[i] != '\\' || i + 1 >= n) {
            fixed[o++] = p[i++];
            continue;
        }
        if (p[i + 1] != 'u' || i + 6 > n) {
            fixed[o++] = p[i++];
            fixed[o++] = p[i++];
            continue;
        }
        unsigned long u = strtoul((char[]){ p[i + 2], p[i + 3], p[i + 4], p[i + 5], 0 }, NULL, 16);
        bool high = u >= 0xd800 && u <= 0xdbff, low = u >= 0xdc00 && u <= 0xdfff;
        if (high && i + 12 <= n && p[i + 6] == '\\' && p[i + 7] == 'u') {
            unsigned long v =
                strtoul((char[]){ p[i + 8], p[i + 9], p[i + 10], p[i + 11], 0 }, NULL, 16);
            if (v >= 0xdc00 && v <= 0xdfff) {
                memcpy(fixed + o, p + i, 12); /* a pair: kept */
                o += 12;
                i += 12;
                continue;
            }
        }
        if (high || low) {
            memcpy(fixed + o, "\\ufffd", 6); /* the same length: @fixed never outgrows @p */
        } else {
            memcpy(fixed + o, p + i, 6);
        }
        o += 6;
        i += 6;
    }
    j = json_loadb(fixed, o, flags | JSON_DECODE_INT_AS_REAL, jerr);
    free(fixed);
    return j;
}

static void eval_done(struct gw_call *call, const struct sbx_event *ev)
{
    int64_t pid = (int64_t)(intptr_t)call->data;
    struct dn_repl *r = repl_find(call->s, (uint32_t)pid);
    const msgpack_object *failed, *value;
    const char *p;
    size_t n;
    json_t *j;
    /* Set by repl_json only when the value is text: a value of another type (the agent's to
     * send) would otherwise show the client uninitialized stack bytes as the reason. */
    json_error_t jerr = { .text = "the value is not a string" };
    char *text;

    if (ev->error != NULL) {
        if (strcmp(ev->error->code, SBX_E_CANCELLED) == 0) {
            gw_call_fail(call, "Error", NULL, "%s: the REPL was closed", call->method);
            return;
        }
        fail_gone(call, ev->error, pid);
        return;
    }
    repl_relay(r, 0, sbx_obj_get(ev->result, "stdout"));
    repl_relay(r, 1, sbx_obj_get(ev->result, "stderr"));
    failed = sbx_obj_get(ev->result, "error");
    value = sbx_obj_get(ev->result, "value");
    j = NULL;
    if (value != NULL && sbx_obj_bytes(value, &p, &n)) {
        j = repl_json(p, n, &jerr);
    }
    if (j == NULL && value != NULL && value->type != MSGPACK_OBJECT_NIL) {
        const msgpack_object *cut = sbx_obj_get(ev->result, "truncated");

        if (cut != NULL && cut->type == MSGPACK_OBJECT_BOOLEAN && cut->via.boolean) {
            gw_call_fail(call, "RangeError", NULL,
                         "%s: the value is larger than the REPL's cap of %u bytes", call->method,
                         SBX_REPL_VALUE_MAX);
            return;
        }
    }
    if (failed == NULL || failed->type != MSGPACK_OBJECT_BOOLEAN || !failed->via.boolean) {
        if (j == NULL && value != NULL && value->type != MSGPACK_OBJECT_NIL) {
            gw_call_fail(call, "Error", NULL, "%s: the REPL's value is not JSON: %s", call->method,
                         jerr.text);
            return;
        }
        gw_call_ok(call, j);
        return;
    }
    if (json_is_object(j) && json_is_string(json_object_get(j, "constructorName"))) {
        json_t *e = gw_errobj(json_string_value(json_object_get(j, "constructorName")), NULL,
                              json_is_string(json_object_get(j, "message"))
                                  ? json_string_value(json_object_get(j, "message"))
                                  : "");
        json_t *stack = json_object_get(j, "stack");

        if (e != NULL && json_is_string(stack)) {
            json_object_set(e, "stack", stack);
        }
        json_decref(j);
        gw_call_fail_obj(call, e);
        return;
    }
    json_decref(j);
    /* A timeout or the interpreter's exit: the agent's text. */
    text = obj_strdup(ev->result, "error_text");
    gw_call_fail(call, "Error", NULL, "%s", text != NULL ? text : "the evaluation failed");
    free(text);
}

static void repl_eval(struct gw_call *call, int64_t pid, const char *code, size_t len)
{
    struct dn_repl *r = repl_find(call->s, (uint32_t)pid);
    struct sbx_err err;

    if (r == NULL) {
        fail_gone(call, NULL, pid);
        return;
    }
    call->data = (void *)(intptr_t)pid;
    if (sbx_repl_eval_as(gw_session_conn(call->s), r->session, code, len, 0, false, "json",
                         gw_call_expect(call, eval_done), NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, call->method, NULL);
        return;
    }
    gw_session_flush(call->s);
}

void gw_m_deno_repl_eval(struct gw_call *call, json_t *params)
{
    const char *code;
    int64_t pid;

    if (pid_param(call, params, &pid) < 0 || gw_param_str(call, params, "code", true, &code) < 0) {
        return;
    }
    repl_eval(call, pid, code, json_string_length(json_object_get(params, "code")));
}

void gw_m_deno_repl_call(struct gw_call *call, json_t *params)
{
    const char *fn;
    json_t *args = json_object_get(params, "args");
    char *a, *code;
    int64_t pid;
    int n;

    if (pid_param(call, params, &pid) < 0 || gw_param_str(call, params, "fn", true, &fn) < 0) {
        return;
    }
    if (args != NULL && !json_is_null(args) && !json_is_array(args)) {
        gw_call_fail(call, "TypeError", NULL, "denoReplCall: args must be an array");
        return;
    }
    /* JSON is JavaScript: the arguments are spread into a call of the function (a name the REPL
     * defined or a function expression). */
    a = args != NULL && !json_is_null(args) ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY)
                                            : strdup("[]");
    n = a != NULL ? asprintf(&code, "(\n%s\n)(...%s)", fn, a) : -1;
    free(a);
    if (n < 0 || gw_call_keep(call, code, free) < 0) {
        if (n >= 0) {
            free(code);
        }
        gw_call_fail(call, "Error", "ENOMEM", "denoReplCall: out of memory");
        return;
    }
    repl_eval(call, pid, code, (size_t)n);
}

static void close_done(struct gw_call *call, const struct sbx_event *ev)
{
    int64_t pid = (int64_t)(intptr_t)call->data;
    struct dn_repl *r;

    if (ev->error != NULL) {
        fail_gone(call, ev->error, pid);
        return;
    }
    r = repl_find(call->s, (uint32_t)pid);
    if (r != NULL) {
        r->closed = true; /* ENOENT from now on; its exit ends the streams */
    }
    gw_call_ok(call, NULL);
}

void gw_m_deno_repl_close(struct gw_call *call, json_t *params)
{
    struct dn_repl *r;
    struct sbx_err err;
    int64_t pid;

    if (pid_param(call, params, &pid) < 0) {
        return;
    }
    r = repl_find(call->s, (uint32_t)pid);
    if (r == NULL) {
        fail_gone(call, NULL, pid);
        return;
    }
    call->data = (void *)(intptr_t)pid;
    if (sbx_repl_close(gw_session_conn(call->s), r->session, gw_call_expect(call, close_done), NULL,
                       &err) < 0) {
        gw_call_unexpect(call);
        fail_gone(call, &err, pid);
        return;
    }
    gw_session_flush(call->s);
}
