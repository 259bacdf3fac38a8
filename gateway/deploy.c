/*
 * Deploy and revisions (docs/GATEWAY.md "Deploy"): the SDK's sandbox.deploy() on an sbx agent.
 *
 * POST /api/v2/sandboxes/<id>/deploy answers {revision_id} at once and starts a job:
 *
 *   queued      the revision exists (DATA/revisions/<rev>/revision.json)
 *   preparing   the gateway's link (link.h) to the source sandbox's agent comes up
 *   installing  mode "local" with installCommand: `sh -c CMD` in `path` (proc.spawn), as --user
 *   building    pack.create of the pack root (`path`, or path/buildDirectory) with the build step
 *               `sh -c buildCommand` in `path`: the tar.gz streams into archive.tar.gz, the
 *               pack.manifest parts into manifest.json
 *   deploying   a fresh sandbox (the vm backend: a new VM; addr: a new entry on the one agent)
 *               with a fixed timeout of GW_DEPLOY_RUN_MS, the archive unpacked there by
 *               transfer.upload_tree, `deno run -A ENTRYPOINT ARGS` started in it, exposed through
 *               the HTTP ingress (ingress.h: a new domain mapped to the process), and probed
 *               through the ingress until the app answers HTTP
 *
 * then the revision is "succeeded" (or "failed" with the reason, logged as an error line). Every
 * line the install and build commands print, one line per stage and the app's output until it
 * serves, are BuildLogs; GET .../build_logs and .../progress stream them as Server-Sent Events
 * (replay, then live, then the end of the body once the revision is finished).
 *
 * Revisions are kept in memory and in DATA/revisions/<rev>/revision.json (written at every stage
 * change and at the end); a restart loads them, and marks a job it interrupted failed.
 *
 * A job's memory lives until no agent request of it is outstanding (responses and EOF failures
 * come to job->req) and its probe handles are closed; job->r is NULL once its revision let go of
 * it (the job ended, or the gateway stops).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "ingress.h"
#include "link.h"
#include "m_fs.h"
#include "sbx/msg.h"

/* --- caps ---------------------------------------------------------------------------------- */

#define REV_ID_LEN 12
#define REVS_MAX   1024 /* revisions a gateway keeps; beyond: 429 */
#define JOBS_MAX   16   /* jobs running at once; beyond: 429 */
/* pack.create jobs one agent connection may run (the agent's cap per connection); the jobs of
 * one sandbox share its link, so more wait their turn in order of creation. */
#define PACK_PER_LINK      4
#define LOG_LINES_MAX      50000        /* BuildLogs of command output per revision ... */
#define LOG_BYTES_MAX      (16u << 20)  /* ... and their bytes in revision.json; beyond: one line */
#define LOG_LINE_MAX       4096         /* a longer output line is split */
#define GW_LINES_MAX       1000         /* the gateway's own BuildLogs per revision (log_kind) */
#define ARCHIVE_MAX        (2ull << 30) /* bytes of one archive */
#define MANIFEST_FILES     200000       /* manifest entries kept ... */
#define MANIFEST_BYTES_MAX (64u << 20)  /* ... and their bytes (on_manifest); beyond: failed */
#define MANIFEST_PER_FILE  64           /* bytes an entry costs beyond its strings */
#define STR_MAX            4096         /* a path, an entrypoint, one argument */
#define CMD_MAX            (16u << 10)  /* installCommand, buildCommand */
#define ARGS_MAX           256          /* args entries */
#define APP_MAX            64           /* the app's name */
#define WATCHERS_MAX       64           /* streaming clients per revision */
#define SSE_HIGH           (256u << 10) /* bytes queued to an SSE client before waiting for drain */
#define REV_FILE_MAX       (64u << 20)  /* a revision.json read at start */
#define UPLOAD_CHUNK       (256u << 10) /* archive bytes read per write toward the agent */
#define UPLOAD_HIGH        (1u << 20)   /* ... while less than this is queued on the stream */
#define PACK_RETRY_MS      250          /* pack.create again after the agent's max_packs */
#define PROBE_EVERY_MS     250
#define PROBE_TRY_MS       3000
#define READY_MS           60000 /* the app must answer HTTP this soon after its start */
#define CMD_TIMEOUT_MS     (30u * 60 * 1000) /* installCommand, buildCommand: each */
#define GW_DEPLOY_RUN_MS   (30 * 60 * 1000)  /* the lifetime of a revision's sandbox */
#define SAVE_LOGS_MS       2000 /* new log lines reach revision.json at most this late */

#define CONTAINER(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

/* --- revisions ----------------------------------------------------------------------------- */

enum stage { ST_QUEUED, ST_PREPARING, ST_INSTALLING, ST_BUILDING, ST_DEPLOYING, ST_N };
static const char *const stage_names[ST_N] = { "queued", "preparing", "installing", "building",
                                               "deploying" };

enum sstat { SS_PENDING, SS_SKIPPED, SS_RUNNING, SS_SUCCEEDED, SS_ERRORED };
static const char *const sstat_names[] = { "pending", "skipped", "running", "succeeded",
                                           "errored" };

enum rstatus { R_QUEUED, R_BUILDING, R_SUCCEEDED, R_FAILED };
static const char *const rstatus_names[] = { "queued", "building", "succeeded", "failed" };

struct stage_rec {
    enum sstat st;
    int64_t start_ms, end_ms;
};

struct rev;
struct job;

/* A client streaming build_logs or progress. */
struct watcher {
    struct watcher *next;
    struct rev *r;
    struct gw_http_conn *hc;
    bool progress;         /* else build logs */
    size_t next_log;       /* logs: the next entry to send */
    char step[16];         /* logs: only this step ("" all) */
    bool sent_final;       /* progress: the finished state went out */
    unsigned progress_seq; /* progress: the version sent */
};

struct rev {
    struct rev *next;
    struct gw_deploy *d;
    char id[REV_ID_LEN + 1];
    char sandbox_id[32]; /* the source sandbox */
    json_t *spec;        /* the validated request (app, entrypoint, args, path, ...) */
    enum rstatus status;
    char error[1024]; /* failed: why */
    int64_t created_ms, finished_ms;
    struct stage_rec stages[ST_N];
    enum stage cur;              /* the stage log lines belong to */
    json_t *logs;                /* array of BuildLog */
    size_t out_lines, out_bytes; /* command output logged (the caps) */
    bool out_truncated;
    size_t gw_lines; /* the gateway's own lines logged (GW_LINES_MAX) */
    bool gw_truncated;
    char domain[GW_DOMAIN_MAX + 1]; /* succeeded: where the app is exposed */
    char run_sandbox[32];           /* the sandbox running it */
    uint32_t run_pid;               /* its agent process id */
    char dest[STR_MAX + 64];        /* where the archive was unpacked in that sandbox */
    struct job *job;                /* while the job runs */
    struct watcher *watchers;
    unsigned nwatchers;
    unsigned progress_seq; /* bumped at every stage change */
    bool dirty;            /* log lines not in revision.json yet */
};

struct gw_deploy {
    struct gw *g;
    struct rev *revs;
    unsigned nrevs, njobs;
    bool stopping;
    uv_timer_t *save_timer; /* saves revisions with new log lines (its own allocation) */
    char dir[4096];         /* DATA/revisions */
};

/* Output of one agent stream split into log lines. */
struct linebuf {
    char buf[LOG_LINE_MAX];
    size_t len;
};

enum jphase { J_LINK, J_INSTALL, J_PACK, J_BOOT, J_UPLOAD, J_RUN, J_DONE };

struct job {
    struct gw *g;
    struct rev *r; /* NULL once let go */
    enum jphase phase;
    struct gw_link_user lu;
    struct gw_link *link; /* joined while not NULL */
    struct sbx_conn *c;   /* the link's connection while up */
    struct gw_link_req req;
    unsigned pending; /* agent requests in flight */
    /* install (proc.spawn) and run: the process, its output */
    uint32_t proc_id, out_sid, err_sid;
    bool out_done, err_done, exited;
    int exit_status;
    struct gw_link_stream st_out, st_err;
    struct linebuf lb_out, lb_err;
    /* pack */
    uint32_t pack_id, arch_sid;
    bool packing;            /* holds one of its link's PACK_PER_LINK packing slots */
    bool pack_wait;          /* waits for one (pack_wake starts it) */
    bool pack_retried;       /* the agent refused pack.create with max_packs (req_fn) */
    bool tmp_made;           /* archive.tar.gz.tmp exists (until it is renamed) */
    struct sbx_conn *pack_c; /* where pack.create went, while it is unanswered */
    struct gw_link_stream st_arch;
    int fd;
    uint64_t arch_bytes;
    json_t *manifest;
    size_t manifest_bytes;          /* what its entries cost (MANIFEST_BYTES_MAX) */
    bool logged_build, logged_scan; /* the pack.progress phases logged (on_progress) */
    /* boot */
    struct gw_sandbox *rsb;
    bool waiting;
    /* upload */
    uint32_t up_sid;
    struct gw_link_stream st_up;
    bool up_ended;
    /* run: probing through the ingress */
    uv_timer_t timer;
    bool timer_open;
    /* the current stage's deadline (--deploy-stage-timeout) */
    uv_timer_t deadline;
    bool deadline_open;
    int64_t run_started_ms;
    struct probe *probe;
    char url[GW_DOMAIN_MAX + 64];
};

static void rev_changed(struct rev *r);
static void job_fail(struct job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void job_step(struct job *j);
static void pack_retry(uv_timer_t *t);
static void watchers_pump(struct rev *r);

/* --- small helpers ------------------------------------------------------------------------- */

static bool id_valid(const char *id)
{
    if (strlen(id) != REV_ID_LEN) {
        return false;
    }
    for (const char *p = id; *p; p++) {
        if (strchr(GW_ID_ALPHABET, *p) == NULL) {
            return false;
        }
    }
    return true;
}

static void iso(int64_t ms, char out[40])
{
    gw_iso_time(ms, out, 40);
}

static json_t *iso_json(int64_t ms)
{
    char t[40];

    if (ms <= 0) {
        return json_null();
    }
    iso(ms, t);
    return json_string(t);
}

static const char *spec_str(const struct rev *r, const char *key)
{
    return json_string_value(json_object_get(r->spec, key));
}

/* --- logs ---------------------------------------------------------------------------------- */

static void rev_save(struct rev *r);

/* Save the revisions with log lines that came since their last save. */
static void save_tick(uv_timer_t *t)
{
    struct gw_deploy *d = t->data;

    for (struct rev *r = d->revs; r != NULL; r = r->next) {
        if (r->dirty) {
            rev_save(r);
        }
    }
}

/* The BuildStep a log line of stage @s belongs to (the SDK has no "queued" step). */
static const char *step_of(enum stage s)
{
    return s <= ST_PREPARING ? "preparing" : stage_names[s];
}

/* The bytes @m (a JSON string) takes in revision.json: jansson writes a control character as
 * \u00XX (\n, \t, ... as two), '"' and '\\' as two, the rest (UTF-8) as it is. */
static size_t json_cost(const json_t *m)
{
    const unsigned char *p = (const unsigned char *)json_string_value(m);
    size_t n = json_string_length(m), cost = n;

    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\' || p[i] == '\b' || p[i] == '\f' || p[i] == '\n' ||
            p[i] == '\r' || p[i] == '\t') {
            cost += 1;
        } else if (p[i] < 0x20) {
            cost += 5;
        }
    }
    return cost;
}

/* What a BuildLog line is, for the caps that keep revision.json loadable at the next start
 * (REV_FILE_MAX). The gateway writes a handful of lines of its own per stage; GW_LINES_MAX bounds
 * what an agent could still make it write (each line at most 2 KiB, 12 KiB stored), so that
 * with the output caps a revision.json stays far below REV_FILE_MAX. */
enum log_kind {
    LOG_OUTPUT,  /* command output: LOG_LINES_MAX lines, LOG_BYTES_MAX as stored */
    LOG_GATEWAY, /* the gateway's own lines: GW_LINES_MAX (an agent can make some of them) */
    LOG_FINAL,   /* a revision's last word (why it failed, where it serves) and the notes of a
                    cap: a bounded number per revision by construction, never dropped */
};

/* Append a BuildLog of @len bytes at @msg (decoded lossily) to @r, unless the cap of @kind was
 * reached (one line then says so). Output is counted by what it costs in revision.json. */
static void log_add(struct rev *r, const char *level, const char *msg, size_t len,
                    enum log_kind kind)
{
    char t[40];

    if ((kind == LOG_OUTPUT && r->out_truncated) || (kind == LOG_GATEWAY && r->gw_truncated)) {
        return;
    }
    if (kind == LOG_GATEWAY && r->gw_lines >= GW_LINES_MAX) {
        static const char cut[] = "(the build log keeps at most 1000 lines of sbx-gateway's own; "
                                  "later ones are left out)";
        r->gw_truncated = true;
        log_add(r, "info", cut, sizeof cut - 1, LOG_FINAL);
        return;
    }
    json_t *m = gw_fs_json_lossy(msg, len);
    if (m == NULL) {
        return; /* out of memory: the line is lost */
    }
    if (kind == LOG_OUTPUT) {
        size_t cost = json_cost(m);

        if (r->out_lines >= LOG_LINES_MAX || r->out_bytes + cost > LOG_BYTES_MAX) {
            json_decref(m);
            r->out_truncated = true;
            static const char cut[] = "(output truncated: the build log keeps at most 50000 "
                                      "lines and 16 MiB of command output)";
            log_add(r, "info", cut, sizeof cut - 1, LOG_FINAL);
            return;
        }
        r->out_lines++;
        r->out_bytes += cost;
    } else if (kind == LOG_GATEWAY) {
        r->gw_lines++;
    }
    iso(gw_now_ms(), t);
    json_t *e = json_pack("{s:s, s:s, s:o, s:s}", "timestamp", t, "level", level, "message", m,
                          "step", step_of(r->cur));
    if (e == NULL || json_array_append_new(r->logs, e) < 0) {
        return; /* out of memory: the line is lost */
    }
    if (!r->dirty && r->d->save_timer != NULL) {
        r->dirty = true;
        if (!uv_is_active((uv_handle_t *)r->d->save_timer)) {
            (void)uv_timer_start(r->d->save_timer, save_tick, SAVE_LOGS_MS, 0);
        }
    }
    watchers_pump(r);
}

/* A formatted line of @kind (at most 2 KiB). */
static void logk(struct rev *r, enum log_kind kind, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void logk(struct rev *r, enum log_kind kind, const char *level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    log_add(r, level, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1, kind);
}

/* A line of the gateway's own; the revision's last line (once, when it finishes). */
#define logf_(r, level, ...)     logk(r, LOG_GATEWAY, level, __VA_ARGS__)
#define log_final(r, level, ...) logk(r, LOG_FINAL, level, __VA_ARGS__)

/* Split @len bytes of command output into lines (a line longer than LOG_LINE_MAX is split). */
static void lines_feed(struct rev *r, struct linebuf *lb, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char ch = (char)data[i];

        if (ch == '\n' || lb->len == sizeof lb->buf) {
            size_t n = lb->len;
            /* Only a CR that ends a line with its LF goes: one where a long line is cut is
             * output like any other byte. */
            if (ch == '\n' && n > 0 && lb->buf[n - 1] == '\r') {
                n--;
            }
            log_add(r, "info", lb->buf, n, LOG_OUTPUT);
            lb->len = 0;
            if (ch == '\n') {
                continue;
            }
        }
        lb->buf[lb->len++] = ch;
    }
}

static void lines_flush(struct rev *r, struct linebuf *lb)
{
    if (lb->len > 0) {
        log_add(r, "info", lb->buf, lb->len, LOG_OUTPUT);
        lb->len = 0;
    }
}

/* --- stages -------------------------------------------------------------------------------- */

static void stage_begin(struct rev *r, enum stage s, const char *what)
{
    r->stages[s].st = SS_RUNNING;
    r->stages[s].start_ms = gw_now_ms();
    r->cur = s;
    if (what != NULL) {
        logf_(r, "info", "%s", what);
    }
    rev_changed(r);
}

static void stage_end(struct rev *r, enum stage s, enum sstat st)
{
    if (r->stages[s].st != SS_RUNNING) {
        return;
    }
    r->stages[s].st = st;
    r->stages[s].end_ms = gw_now_ms();
    rev_changed(r);
}

static void stage_skip(struct rev *r, enum stage s)
{
    r->stages[s].st = SS_SKIPPED;
    rev_changed(r);
}

/* --- JSON views ---------------------------------------------------------------------------- */

static json_t *stage_json(const struct stage_rec *s)
{
    json_t *o = json_pack("{s:s}", "status", sstat_names[s->st]);

    if (o != NULL && s->st != SS_PENDING && s->st != SS_SKIPPED) {
        (void)json_object_set_new(o, "start", iso_json(s->start_ms));
        if (s->st != SS_RUNNING) {
            (void)json_object_set_new(o, "end", iso_json(s->end_ms));
        }
    }
    return o;
}

static json_t *timelines_json(const struct rev *r)
{
    json_t *a = json_array();
    const char *app = spec_str(r, "app");
    bool production = !json_is_false(json_object_get(r->spec, "production"));

    if (a == NULL || r->status != R_SUCCEEDED || r->domain[0] == '\0') {
        return a;
    }
    (void)json_array_append_new(a, json_pack("{s:s, s:{}, s:{s:s, s:s}, s:{s:s}, s:[{s:s}]}",
                                             "slug", production ? "production" : "preview",
                                             "partition", "app", "id", app, "slug", app, "context",
                                             "slug", production ? "production" : "preview",
                                             "domains", "domain", r->domain));
    return a;
}

static json_t *progress_json(const struct rev *r)
{
    json_t *o = json_object();
    json_t *tl = json_array();

    if (o == NULL || tl == NULL) {
        json_decref(o);
        json_decref(tl);
        return NULL;
    }
    for (int s = 0; s < ST_N; s++) {
        json_t *v = stage_json(&r->stages[s]);
        if (v == NULL) {
            continue;
        }
        if (s == ST_INSTALLING || s == ST_BUILDING) {
            const char *cmd = spec_str(r, s == ST_INSTALLING ? "installCommand" : "buildCommand");
            (void)json_object_set_new(v, "command", cmd != NULL ? json_string(cmd) : json_null());
        }
        (void)json_object_set_new(o, stage_names[s], v);
    }
    if (r->status == R_SUCCEEDED && r->domain[0] != '\0') {
        const struct stage_rec *d = &r->stages[ST_DEPLOYING];
        json_t *t = stage_json(d);
        if (t != NULL) {
            (void)json_object_set_new(
                t, "slug",
                json_string(json_is_false(json_object_get(r->spec, "production")) ? "preview"
                                                                                  : "production"));
            (void)json_object_set_new(t, "partition", json_object());
            (void)json_object_set_new(t, "database", json_pack("{s:s}", "status", "skipped"));
            (void)json_object_set_new(t, "predeploy",
                                      json_pack("{s:s, s:n}", "status", "skipped", "command"));
            (void)json_object_set_new(t, "routing", stage_json(d));
            (void)json_array_append_new(tl, t);
        }
    }
    json_t *dep = json_object_get(o, "deploying");
    if (dep != NULL) {
        (void)json_object_set_new(dep, "timelines", tl);
    } else {
        json_decref(tl);
    }
    return o;
}

/* The Revision the SDK reads (types.d.ts Revision), plus the gateway's own keys: app,
 * sandbox_id, entrypoint, args, error, domains, url, run_sandbox_id. */
static json_t *rev_json(const struct rev *r)
{
    struct gw *g = r->d->g;
    const char *install = spec_str(r, "installCommand");
    const char *build = spec_str(r, "buildCommand");
    json_t *domains = json_array();
    json_t *url = json_null();

    if (r->domain[0] != '\0' && domains != NULL) {
        char u[GW_DOMAIN_MAX + 64], why[256];
        (void)json_array_append_new(domains, json_string(r->domain));
        if (gw_ingress_url(g, r->domain, u, sizeof u, why, sizeof why) == 0) {
            json_decref(url);
            url = json_string(u);
        }
    }
    json_t *o = json_pack(
        "{s:s, s:s, s:o, s:{}, s:[], s:[], s:{s:s, s:o, s:o, s:n, s:b, s:{s:s, s:O, s:O}}, "
        "s:o, s:n, s:o, s:n}",
        "id", r->id, "status", rstatus_names[r->status], "failure_reason",
        r->status == R_FAILED ? json_string("error") : json_null(), "labels", "layers", "env_vars",
        "config", "framework", "", "install", install != NULL ? json_string(install) : json_null(),
        "build", build != NULL ? json_string(build) : json_null(), "predeploy", "crons", 1,
        "runtime", "type", "dynamic", "entrypoint", json_object_get(r->spec, "entrypoint"), "args",
        json_object_get(r->spec, "args"), "created_at", iso_json(r->created_ms),
        "cancellation_requested_at", "build_finished_at", iso_json(r->finished_ms), "deleted_at");
    if (o == NULL) {
        json_decref(domains);
        json_decref(url);
        return NULL;
    }
    (void)json_object_set(o, "app", json_object_get(r->spec, "app"));
    (void)json_object_set_new(o, "sandbox_id", json_string(r->sandbox_id));
    (void)json_object_set(o, "entrypoint", json_object_get(r->spec, "entrypoint"));
    (void)json_object_set(o, "args", json_object_get(r->spec, "args"));
    (void)json_object_set_new(o, "error",
                              r->status == R_FAILED ? json_string(r->error) : json_null());
    (void)json_object_set_new(o, "domains", domains != NULL ? domains : json_array());
    (void)json_object_set_new(o, "url", url);
    (void)json_object_set_new(
        o, "run_sandbox_id", r->run_sandbox[0] != '\0' ? json_string(r->run_sandbox) : json_null());
    {
        /* Whether the app's sandbox still runs (it has a fixed lifetime, GW_DEPLOY_RUN_MS). */
        struct gw_sandbox *rsb =
            r->run_sandbox[0] != '\0' ? gw_sandbox_find(g, r->run_sandbox) : NULL;
        (void)json_object_set_new(
            o, "running",
            json_boolean(r->status == R_SUCCEEDED && rsb != NULL && rsb->state == GW_SB_READY));
    }
    return o;
}

/* --- persistence --------------------------------------------------------------------------- */

static int rev_dir(const struct rev *r, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/%s", r->d->dir, r->id);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static void rev_save(struct rev *r)
{
    char dir[4200], path[4300];
    json_t *stages = json_object();

    if (rev_dir(r, dir, sizeof dir) < 0 || stages == NULL) {
        json_decref(stages);
        return;
    }
    r->dirty = false;
    for (int s = 0; s < ST_N; s++) {
        (void)json_object_set_new(stages, stage_names[s],
                                  json_pack("{s:s, s:I, s:I}", "status",
                                            sstat_names[r->stages[s].st], "start_ms",
                                            (json_int_t)r->stages[s].start_ms, "end_ms",
                                            (json_int_t)r->stages[s].end_ms));
    }
    json_t *o = json_pack("{s:s, s:s, s:O, s:s, s:s, s:I, s:I, s:o, s:O, s:s, s:s, s:I, s:s}", "id",
                          r->id, "sandbox_id", r->sandbox_id, "spec", r->spec, "status",
                          rstatus_names[r->status], "error", r->error, "created_ms",
                          (json_int_t)r->created_ms, "finished_ms", (json_int_t)r->finished_ms,
                          "stages", stages, "logs", r->logs, "domain", r->domain, "run_sandbox_id",
                          r->run_sandbox, "run_pid", (json_int_t)r->run_pid, "dest", r->dest);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    (void)snprintf(path, sizeof path, "%s/revision.json", dir);
    if (text == NULL || gw_file_write_atomic(path, text, strlen(text), 0600) < 0) {
        gw_log("revision %s: cannot save %s: %s", r->id, path,
               text == NULL ? "out of memory" : strerror(errno));
    }
    free(text);
}

/* A stage changed (or the revision finished): save, and tell progress watchers. */
static void rev_changed(struct rev *r)
{
    r->progress_seq++;
    rev_save(r);
    watchers_pump(r);
}

static struct rev *rev_new(struct gw_deploy *d, const char *id)
{
    struct rev *r = calloc(1, sizeof(*r));

    if (r == NULL || (r->logs = json_array()) == NULL) {
        free(r);
        return NULL;
    }
    r->d = d;
    (void)snprintf(r->id, sizeof r->id, "%s", id);
    r->next = d->revs;
    d->revs = r;
    d->nrevs++;
    return r;
}

static struct rev *rev_find(struct gw_deploy *d, const char *id)
{
    for (struct rev *r = d->revs; r != NULL; r = r->next) {
        if (strcmp(r->id, id) == 0) {
            return r;
        }
    }
    return NULL;
}

static int64_t int_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static void copy_str(char *out, size_t len, json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    (void)snprintf(out, len, "%s", s != NULL ? s : "");
}

static int enum_of(const char *const *names, int n, const char *s, int def)
{
    for (int i = 0; s != NULL && i < n; i++) {
        if (strcmp(names[i], s) == 0) {
            return i;
        }
    }
    return def;
}

/* One DATA/revisions/<id>/revision.json into memory. */
static void rev_load(struct gw_deploy *d, const char *id)
{
    char path[4300];
    char *text = NULL;
    size_t len = 0;
    json_error_t jerr;

    (void)snprintf(path, sizeof path, "%s/%s/revision.json", d->dir, id);
    /* Only a regular file: gw_file_read's open would wait forever on a FIFO put there. */
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        gw_log("%s: not a regular file; skipped", path);
        return;
    }
    if (gw_file_read(path, REV_FILE_MAX, &text, &len) < 0) {
        gw_log("%s: %s", path, strerror(errno));
        return;
    }
    json_t *o = json_loadb(text, len, 0, &jerr);
    free(text);
    json_t *spec = json_object_get(o, "spec");
    json_t *logs = json_object_get(o, "logs");
    if (!json_is_object(o) || !json_is_object(spec) ||
        !json_is_string(json_object_get(spec, "app")) ||
        !json_is_string(json_object_get(spec, "entrypoint")) ||
        !json_is_array(json_object_get(spec, "args")) || !json_is_array(logs)) {
        gw_log("%s: not a revision record; skipped", path);
        json_decref(o);
        return;
    }
    struct rev *r = rev_new(d, id);
    if (r == NULL) {
        json_decref(o);
        return;
    }
    r->spec = json_incref(spec);
    json_decref(r->logs);
    r->logs = json_incref(logs);
    copy_str(r->sandbox_id, sizeof r->sandbox_id, o, "sandbox_id");
    copy_str(r->error, sizeof r->error, o, "error");
    copy_str(r->domain, sizeof r->domain, o, "domain");
    copy_str(r->run_sandbox, sizeof r->run_sandbox, o, "run_sandbox_id");
    copy_str(r->dest, sizeof r->dest, o, "dest");
    r->run_pid = (uint32_t)int_of(o, "run_pid");
    r->created_ms = int_of(o, "created_ms");
    r->finished_ms = int_of(o, "finished_ms");
    r->status = (enum rstatus)enum_of(rstatus_names, 4,
                                      json_string_value(json_object_get(o, "status")), R_FAILED);
    json_t *stages = json_object_get(o, "stages");
    for (int s = 0; s < ST_N; s++) {
        json_t *x = json_object_get(stages, stage_names[s]);
        r->stages[s].st = (enum sstat)enum_of(
            sstat_names, 5, json_string_value(json_object_get(x, "status")), SS_PENDING);
        r->stages[s].start_ms = int_of(x, "start_ms");
        r->stages[s].end_ms = int_of(x, "end_ms");
        if (r->stages[s].st == SS_RUNNING) {
            r->cur = (enum stage)s;
        }
    }
    json_decref(o);
    if (r->status == R_QUEUED || r->status == R_BUILDING) {
        /* The gateway stopped while its job ran. */
        int64_t now = gw_now_ms();
        for (int s = 0; s < ST_N; s++) {
            if (r->stages[s].st == SS_RUNNING) {
                r->stages[s].st = SS_ERRORED;
                r->stages[s].end_ms = now;
            }
        }
        r->status = R_FAILED;
        r->finished_ms = now;
        (void)snprintf(r->error, sizeof r->error,
                       "the build was interrupted: sbx-gateway stopped while it ran");
        log_final(r, "error", "%s", r->error);
        rev_save(r);
    }
}

/* --- watchers (SSE build_logs, progress) ---------------------------------------------------- */

static bool rev_finished(const struct rev *r)
{
    return r->status == R_SUCCEEDED || r->status == R_FAILED;
}

static void watcher_free(struct watcher *w)
{
    struct watcher **pp = &w->r->watchers;

    while (*pp != NULL && *pp != w) {
        pp = &(*pp)->next;
    }
    if (*pp == w) {
        *pp = w->next;
        w->r->nwatchers--;
    }
    free(w);
}

static int sse_send(struct watcher *w, json_t *v)
{
    char *text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (text == NULL) {
        return 0; /* out of memory: skipped */
    }
    size_t n = strlen(text);
    char *frame = malloc(n + 8);
    int rc = -1;
    if (frame != NULL) {
        memcpy(frame, "data: ", 6);
        memcpy(frame + 6, text, n);
        memcpy(frame + 6 + n, "\n\n", 2);
        rc = gw_http_stream_write(w->hc, frame, n + 8);
    }
    free(frame);
    free(text);
    return rc;
}

/* Send what @w has not seen yet, while its socket keeps up; end it once the revision is done
 * and everything went out. Returns false when @w was freed. */
static bool watcher_pump(struct watcher *w)
{
    struct rev *r = w->r;

    if (w->progress) {
        if (w->progress_seq != r->progress_seq && gw_http_stream_queued(w->hc) < SSE_HIGH) {
            w->progress_seq = r->progress_seq;
            if (sse_send(w, progress_json(r)) < 0) {
                goto gone;
            }
        }
    } else {
        size_t n = json_array_size(r->logs);
        while (w->next_log < n && gw_http_stream_queued(w->hc) < SSE_HIGH) {
            json_t *e = json_array_get(r->logs, w->next_log++);
            if (w->step[0] != '\0' &&
                strcmp(json_string_value(json_object_get(e, "step")) ?: "", w->step) != 0) {
                continue;
            }
            if (sse_send(w, json_incref(e)) < 0) {
                goto gone;
            }
        }
    }
    bool caught_up =
        w->progress ? w->progress_seq == r->progress_seq : w->next_log >= json_array_size(r->logs);
    if (rev_finished(r) && caught_up) {
        gw_http_stream_end(w->hc);
        watcher_free(w);
        return false;
    }
    return true;
gone:
    gw_http_stream_end(w->hc);
    watcher_free(w);
    return false;
}

static void watchers_pump(struct rev *r)
{
    for (struct watcher *w = r->watchers, *next; w != NULL; w = next) {
        next = w->next;
        (void)watcher_pump(w);
    }
}

static void watcher_drain(struct gw_http_conn *hc, void *user)
{
    (void)hc;
    (void)watcher_pump(user);
}

static void watcher_abandon(struct gw_http_conn *hc, void *user)
{
    (void)hc;
    watcher_free(user);
}

static void watch(struct rev *r, struct gw_http_conn *hc, const struct gw_http_req *req,
                  bool progress)
{
    static const char *const hdrs[] = { "Content-Type: text/event-stream",
                                        "Cache-Control: no-cache", NULL };
    struct watcher *w;

    if (r->nwatchers >= WATCHERS_MAX) {
        gw_rest_error(hc, 429, "TOO_MANY_REQUESTS", "revision %s: more than %d clients stream it",
                      r->id, WATCHERS_MAX);
        return;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        gw_rest_error(hc, 500, "INTERNAL", "out of memory");
        return;
    }
    w->r = r;
    w->hc = hc;
    w->progress = progress;
    w->progress_seq = r->progress_seq - 1; /* the current state goes out first */
    /* ?step=installing: only that step's lines (the SDK's BuildLogsOptions). */
    const char *q = strstr(req->query, "step=");
    if (!progress && q != NULL && (q == req->query || q[-1] == '&')) {
        size_t n = strcspn(q + 5, "&");
        if (n < sizeof w->step) {
            memcpy(w->step, q + 5, n);
        }
    }
    if (gw_http_stream_start(hc, 200, hdrs) < 0) {
        gw_http_stream_end(hc);
        free(w);
        return;
    }
    w->next = r->watchers;
    r->watchers = w;
    r->nwatchers++;
    gw_http_on_abandon(hc, watcher_abandon, w);
    gw_http_on_drain(hc, watcher_drain, w);
    (void)watcher_pump(w);
}

/* --- jobs ---------------------------------------------------------------------------------- */

struct probe {
    struct job *j; /* NULL once the job let go */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timeout;
    char req[GW_DOMAIN_MAX + 160];
    char resp[64];
    size_t rlen;
    int handles;
    bool done;
};

static void job_maybe_free(struct job *j)
{
    if (j->r != NULL || j->pending > 0 || j->timer_open || j->deadline_open || j->probe != NULL ||
        j->waiting) {
        return;
    }
    json_decref(j->manifest);
    if (j->fd >= 0) {
        (void)close(j->fd);
    }
    free(j);
}

static void timer_closed(uv_handle_t *h)
{
    struct job *j = h->data;

    if (h == (uv_handle_t *)&j->timer) {
        j->timer_open = false;
    } else {
        j->deadline_open = false;
    }
    job_maybe_free(j);
}

static void probe_closed(uv_handle_t *h)
{
    struct probe *p = h->data;
    if (--p->handles == 0) {
        free(p);
    }
}

static void probe_close(struct probe *p)
{
    if (p->done) {
        return;
    }
    p->done = true;
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
    uv_close((uv_handle_t *)&p->timeout, probe_closed);
}

/* Cancel the pack job whose streams are @arch and @out, @err (0: none) on @c: the agent kills
 * its build and stops packing (PROTOCOL.md 19.2), which frees its max_packs slot. */
static void pack_cancel(struct sbx_conn *c, uint32_t arch, uint32_t out, uint32_t err)
{
    uint32_t sids[] = { arch, out, err };
    struct sbx_err e;

    for (size_t i = 0; i < sizeof sids / sizeof sids[0]; i++) {
        /* A stream already over is a no-op; a connection that ended (the link's EOF events
         * fail a job too) refuses, and has cancelled everything already. */
        if (sids[i] != 0) {
            (void)sbx_conn_cancel(c, sids[i], &e);
        }
    }
}

/* Stop the streams of the current phase from reaching @j: afterwards no stream of the link holds
 * a pointer into @j, which may be freed before the link ends (the gateway stops its jobs before
 * its links). The link acknowledges the data of a detached output stream from now on; that is
 * all for a process's output (a served app's must never block it), while a pack still running
 * is cancelled (acknowledged, it would pack on for nobody). */
static void job_detach_streams(struct job *j)
{
    if (j->c == NULL) {
        return;
    }
    uint32_t sids[] = { j->out_sid, j->err_sid, j->arch_sid, j->up_sid };
    for (size_t i = 0; i < sizeof sids / sizeof sids[0]; i++) {
        if (sids[i] != 0) {
            (void)sbx_conn_stream_set_user(j->c, sids[i], NULL);
        }
    }
    if (j->packing) {
        pack_cancel(j->c, j->arch_sid, j->out_sid, j->err_sid);
    }
    /* The upload is cancelled even when upload_feed ended it: until its stream.end is written
     * (it waits behind queued bytes for the agent's credit) the core keeps the stream, and a
     * job that stops here wants no half-unpacked archive. Once the end is out the core forgot
     * the stream and this is a no-op. */
    if (j->up_sid != 0) {
        (void)sbx_conn_cancel(j->c, j->up_sid, &(struct sbx_err){ 0 });
    }
    j->out_sid = j->err_sid = j->arch_sid = j->up_sid = 0;
}

static void job_leave_link(struct job *j)
{
    job_detach_streams(j);
    if (j->link != NULL) {
        gw_link_flush(j->link);
        gw_link_leave(j->link, &j->lu);
        j->link = NULL;
    }
    j->c = NULL;
}

static void on_rsb_ready(struct gw_sandbox *sb, void *user);

/* The job is over (or the gateway stops): let go of everything; @j is freed once nothing of it
 * is outstanding. */
/* Jobs of @d packing on @link. */
static unsigned packing_on(struct gw_deploy *d, const struct gw_link *link)
{
    unsigned n = 0;

    for (struct rev *r = d->revs; r != NULL; r = r->next) {
        n += r->job != NULL && r->job->packing && r->job->link == link;
    }
    return n;
}

/* @j's pack ended (or it never started one): free its slot and start the oldest job waiting
 * for a slot on the same link. Call before the job leaves the link. */
static void pack_done(struct job *j)
{
    struct gw_deploy *d = j->r != NULL ? j->r->d : NULL;
    const struct gw_link *link = j->link;
    struct job *next = NULL;

    j->pack_wait = false;
    if (!j->packing || d == NULL || link == NULL) {
        j->packing = false;
        return;
    }
    j->packing = false;
    for (struct rev *r = d->revs; r != NULL; r = r->next) {
        struct job *w = r->job;

        if (w != NULL && w->pack_wait && w->link == link &&
            (next == NULL || r->created_ms < next->r->created_ms)) {
            next = w;
        }
    }
    if (next != NULL) {
        next->pack_wait = false;
        job_step(next);
    }
}

static void job_release(struct job *j)
{
    struct rev *r = j->r;

    /* The cancel of a running pack goes out before pack_done gives the slot to the next job,
     * whose pack.create the agent would otherwise read first. */
    job_detach_streams(j);
    pack_done(j);
    j->phase = J_DONE;
    job_leave_link(j);
    if (j->waiting && j->rsb != NULL) {
        gw_sandbox_unwait(j->rsb, on_rsb_ready, j);
        j->waiting = false;
    }
    if (j->probe != NULL) {
        j->probe->j = NULL;
        probe_close(j->probe);
        j->probe = NULL;
    }
    if (j->timer_open && !uv_is_closing((uv_handle_t *)&j->timer)) {
        uv_close((uv_handle_t *)&j->timer, timer_closed);
    }
    if (j->deadline_open && !uv_is_closing((uv_handle_t *)&j->deadline)) {
        uv_close((uv_handle_t *)&j->deadline, timer_closed);
    }
    if (j->fd >= 0) {
        (void)close(j->fd);
        j->fd = -1;
    }
    if (j->tmp_made && r != NULL) {
        char dir[4200], tmp[4300];
        (void)rev_dir(r, dir, sizeof dir);
        (void)snprintf(tmp, sizeof tmp, "%s/archive.tar.gz.tmp", dir);
        if (unlink(tmp) < 0 && errno != ENOENT) {
            gw_log("revision %s: %s: %s", r->id, tmp, strerror(errno));
        }
        j->tmp_made = false;
    }
    if (r != NULL) {
        r->job = NULL;
        r->d->njobs--;
        j->r = NULL;
    }
    job_maybe_free(j);
}

static void job_fail(struct job *j, const char *fmt, ...)
{
    struct rev *r = j->r;
    va_list ap;

    if (r == NULL || j->phase == J_DONE) {
        return;
    }
    va_start(ap, fmt);
    (void)vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    lines_flush(r, &j->lb_out);
    lines_flush(r, &j->lb_err);
    log_final(r, "error", "%s", r->error);
    if (!r->d->g->opt.quiet) {
        gw_log("revision %s: failed: %s", r->id, r->error);
    }
    /* A started app is stopped (the addr backend's sandbox entry is not a VM of its own), and
     * so is an install command still running (the installing stage's deadline passed: it would
     * run on for nobody until its own CMD_TIMEOUT_MS). */
    if ((j->phase == J_RUN || j->phase == J_INSTALL) && j->c != NULL && j->proc_id != 0 &&
        !j->exited) {
        (void)sbx_proc_kill(j->c, j->proc_id, 9, true, NULL, NULL, &(struct sbx_err){ 0 });
    }
    struct gw_sandbox *rsb = j->rsb;
    j->rsb = NULL;
    for (int s = 0; s < ST_N; s++) {
        stage_end(r, (enum stage)s, SS_ERRORED);
    }
    r->status = R_FAILED;
    r->finished_ms = gw_now_ms();
    job_release(j);
    if (rsb != NULL && rsb->state != GW_SB_GONE) {
        gw_sandbox_kill(rsb, "the revision failed");
    }
    rev_changed(r);
}

static void job_succeed(struct job *j)
{
    struct rev *r = j->r;

    lines_flush(r, &j->lb_out);
    lines_flush(r, &j->lb_err);
    log_final(r, "info", "the app serves HTTP at %s", j->url);
    stage_end(r, ST_DEPLOYING, SS_SUCCEEDED);
    r->status = R_SUCCEEDED;
    r->finished_ms = gw_now_ms();
    if (!r->d->g->opt.quiet) {
        gw_log("revision %s: ready at %s (sandbox %s)", r->id, j->url, r->run_sandbox);
    }
    j->rsb = NULL;
    job_release(j);
    rev_changed(r);
}

/* What the job waits for in each phase, for the deadline's message. */
static const char *const phase_waits[] = {
    [J_LINK] = "the sandbox's agent had not answered",
    [J_INSTALL] = "the install command still ran",
    [J_PACK] = "the agent was still building or packaging",
    [J_BOOT] = "the revision's sandbox was still starting",
    [J_UPLOAD] = "the archive was still being unpacked in the revision's sandbox",
    [J_RUN] = "the app had not answered HTTP yet",
    [J_DONE] = "",
};

static void on_deadline(uv_timer_t *t)
{
    struct job *j = t->data;
    char d[32];

    if (j->r == NULL) {
        return;
    }
    gw_duration_text(j->g->opt.stage_ms > 0 ? j->g->opt.stage_ms : GW_STAGE_MS, d, sizeof d);
    job_fail(j, "the %s stage did not finish within %s (%s)", stage_names[j->r->cur], d,
             phase_waits[j->phase]);
}

/*
 * Stage @s of @j's revision begins, with a deadline of --deploy-stage-timeout: whatever the job
 * waits for (an agent that never answers hello, pack.create or upload_tree, an archive stream
 * that never ends, a sandbox that never boots) it ends by then, failed with what it waited for,
 * and frees its slot (JOBS_MAX). Waiting for a packing slot (PACK_PER_LINK) is no stage: the
 * jobs holding the slots each have a deadline of their own.
 */
static void job_stage(struct job *j, enum stage s)
{
    int64_t ms = j->g->opt.stage_ms > 0 ? j->g->opt.stage_ms : GW_STAGE_MS;

    stage_begin(j->r, s, NULL);
    (void)uv_timer_start(&j->deadline, on_deadline, (uint64_t)ms, 0);
}

/* --- the link ------------------------------------------------------------------------------ */

static void job_link(struct job *j, struct gw_sandbox *sb)
{
    char why[256];
    struct gw_link *l = gw_link_get(sb, why, sizeof why);

    if (l == NULL) {
        job_fail(j, "cannot reach the agent of sandbox %s: %s", sb->id, why);
        return;
    }
    j->link = l;
    gw_link_join(l, &j->lu);
}

static void lu_up(struct gw_link_user *u, struct sbx_conn *c)
{
    struct job *j = CONTAINER(u, struct job, lu);

    j->c = c;
    job_step(j);
}

static void lu_down(struct gw_link_user *u, const char *why)
{
    struct job *j = CONTAINER(u, struct job, lu);

    j->link = NULL;
    j->c = NULL;
    j->out_sid = j->err_sid = j->arch_sid = j->up_sid = 0;
    job_fail(j, "the connection to the sandbox's agent ended: %s", why);
}

/* --- install and run: one process with piped output ----------------------------------------- */

static void proc_check_done(struct job *j);

static void proc_stream(struct job *j, bool is_out, const struct sbx_event *ev)
{
    if (j->r == NULL) {
        return;
    }
    switch (ev->kind) {
    case SBX_EV_DATA:
        lines_feed(j->r, is_out ? &j->lb_out : &j->lb_err, ev->data, ev->len);
        (void)sbx_conn_consumed(j->c, ev->stream, ev->len, &(struct sbx_err){ 0 });
        return;
    case SBX_EV_END:
    case SBX_EV_CANCEL:
        lines_flush(j->r, is_out ? &j->lb_out : &j->lb_err);
        if (is_out) {
            j->out_done = true;
            j->out_sid = 0;
        } else {
            j->err_done = true;
            j->err_sid = 0;
        }
        proc_check_done(j);
        return;
    default:
        return;
    }
}

static void st_out_fn(struct gw_link_stream *st, const struct sbx_event *ev)
{
    proc_stream(CONTAINER(st, struct job, st_out), true, ev);
}

static void st_err_fn(struct gw_link_stream *st, const struct sbx_event *ev)
{
    proc_stream(CONTAINER(st, struct job, st_err), false, ev);
}

static void spawn_sh(struct job *j, const char *const *argv, const char *cwd)
{
    struct sbx_spawn_params p = { 0 };
    struct sbx_err err;

    p.argv = argv;
    p.cwd = cwd;
    p.user = j->g->opt.user;
    p.stdin_mode = SBX_STDIO_NULL;
    p.stdout_mode = SBX_STDIO_PIPE;
    p.stderr_mode = SBX_STDIO_PIPE;
    p.timeout_ms = j->phase == J_INSTALL ? CMD_TIMEOUT_MS : 0;
    j->proc_id = 0;
    j->out_done = j->err_done = j->exited = false;
    if (sbx_proc_spawn(j->c, &p, &j->req, NULL, &err) < 0) {
        job_fail(j, "cannot start %s: %s: %s", argv[0], err.code, err.msg);
        return;
    }
    j->pending++;
}

/* The install command exited and its output ended; or the app exited before it served. */
static void proc_check_done(struct job *j)
{
    struct rev *r = j->r;

    if (r == NULL || !j->exited || !j->out_done || !j->err_done) {
        return;
    }
    if (j->phase == J_RUN) {
        job_fail(j, "the app exited before it served HTTP (exit status %d)", j->exit_status);
        return;
    }
    if (j->phase != J_INSTALL) {
        return;
    }
    if (j->exit_status != 0) {
        job_fail(j, "the install command failed: exit status %d", j->exit_status);
        return;
    }
    logf_(r, "info", "install command finished");
    stage_end(r, ST_INSTALLING, SS_SUCCEEDED);
    j->phase = J_PACK;
    job_step(j);
}

/* --- pack ---------------------------------------------------------------------------------- */

static void st_arch_fn(struct gw_link_stream *st, const struct sbx_event *ev)
{
    struct job *j = CONTAINER(st, struct job, st_arch);
    struct rev *r = j->r;

    if (r == NULL) {
        return;
    }
    switch (ev->kind) {
    case SBX_EV_DATA: {
        if (j->arch_bytes + ev->len > ARCHIVE_MAX) {
            job_fail(j, "the archive is larger than %llu bytes", (unsigned long long)ARCHIVE_MAX);
            return;
        }
        size_t off = 0;
        while (off < ev->len) {
            ssize_t n = write(j->fd, ev->data + off, ev->len - off);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                job_fail(j, "writing the archive: %s", strerror(errno));
                return;
            }
            off += (size_t)n;
        }
        j->arch_bytes += ev->len;
        (void)sbx_conn_consumed(j->c, ev->stream, ev->len, &(struct sbx_err){ 0 });
        return;
    }
    case SBX_EV_CANCEL:
    case SBX_EV_END:
        j->arch_sid = 0;
        lines_flush(r, &j->lb_out);
        lines_flush(r, &j->lb_err);
        if (ev->error != NULL) {
            const struct sbx_err *e = ev->error;
            if (strcmp(e->code, "CANCELLED") == 0 && strstr(e->msg, "build") != NULL) {
                job_fail(j, "the build command failed: %s", e->msg);
            } else if (strcmp(e->field, "entrypoint") == 0) {
                job_fail(j, "the entrypoint %s is not in %s (after the build)",
                         spec_str(r, "entrypoint"), spec_str(r, "root"));
            } else {
                job_fail(j, "packaging %s failed: %s: %s%s%s", spec_str(r, "root"), e->code, e->msg,
                         e->path[0] != '\0' ? ": " : "", e->path);
            }
            return;
        }
        if (ev->kind == SBX_EV_CANCEL) {
            job_fail(j, "the archive stream was cancelled");
            return;
        }
        /* The whole archive: keep it and its manifest. */
        {
            char dir[4200], tmp[4300], path[4300];
            (void)rev_dir(r, dir, sizeof dir);
            (void)snprintf(tmp, sizeof tmp, "%s/archive.tar.gz.tmp", dir);
            (void)snprintf(path, sizeof path, "%s/archive.tar.gz", dir);
            if (fsync(j->fd) < 0 || close(j->fd) < 0) {
                j->fd = -1;
                job_fail(j, "writing the archive: %s", strerror(errno));
                return;
            }
            j->fd = -1;
            if (rename(tmp, path) < 0) {
                job_fail(j, "keeping the archive: %s", strerror(errno));
                return;
            }
            j->tmp_made = false;
            char *text = j->manifest != NULL ? json_dumps(j->manifest, JSON_COMPACT) : NULL;
            (void)snprintf(path, sizeof path, "%s/manifest.json", dir);
            if (text == NULL || gw_file_write_atomic(path, text, strlen(text), 0600) < 0) {
                free(text);
                job_fail(j, "writing the manifest: %s",
                         text == NULL ? "no manifest came" : strerror(errno));
                return;
            }
            free(text);
            logf_(r, "info", "packaged %" PRId64 " files into a %" PRIu64 "-byte archive",
                  (int64_t)json_integer_value(json_object_get(j->manifest, "file_count")),
                  j->arch_bytes);
        }
        stage_end(r, ST_BUILDING, SS_SUCCEEDED);
        j->phase = J_BOOT;
        pack_done(j);
        job_leave_link(j);
        job_step(j);
        return;
    default:
        return;
    }
}

/* A uint for the JSON records (json_int_t): 0 when absent, another type, or beyond INT64_MAX,
 * which the cast would make negative. */
static uint64_t mp_u64(const msgpack_object *o)
{
    return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX
               ? o->via.u64
               : 0;
}

/*
 * Field @key of a pack.manifest map @m as a JSON string (lossy UTF-8) into *@out, checked
 * against PROTOCOL.md 19.5 before anything is kept: at most @max bytes as sent; with @hex,
 * exactly 64 hex digits; with @one_of (NULL-terminated), one of those. An absent field is
 * *@out NULL, an error when @required. 0, or -1 with what is wrong in @why.
 */
static int man_str(const msgpack_object *m, const char *key, bool required, size_t max, bool hex,
                   const char *const *one_of, json_t **out, char *why, size_t whylen)
{
    const msgpack_object *o = sbx_obj_get(m, key);
    const char *p;
    size_t n;

    *out = NULL;
    if (o == NULL) {
        if (required) {
            (void)snprintf(why, whylen, "%s is missing", key);
            return -1;
        }
        return 0;
    }
    if (!sbx_obj_bytes(o, &p, &n)) {
        (void)snprintf(why, whylen, "%s is not a string", key);
        return -1;
    }
    if (n > max) {
        (void)snprintf(why, whylen, "%s is longer than %zu bytes", key, max);
        return -1;
    }
    if (hex) {
        size_t digits = 0;
        while (digits < n && gw_hexval(p[digits]) >= 0) {
            digits++;
        }
        if (n != 64 || digits != n) {
            (void)snprintf(why, whylen, "%s is not 64 hex digits", key);
            return -1;
        }
    }
    bool known = one_of == NULL;
    for (size_t i = 0; !known && one_of[i] != NULL; i++) {
        known = strlen(one_of[i]) == n && memcmp(one_of[i], p, n) == 0;
    }
    if (!known) {
        int w = snprintf(why, whylen, "%s is not one of", key);
        for (size_t i = 0; one_of[i] != NULL && w > 0 && (size_t)w < whylen; i++) {
            w += snprintf(why + w, whylen - (size_t)w, "%s \"%s\"", i == 0 ? "" : ",", one_of[i]);
        }
        return -1;
    }
    *out = gw_fs_json_lossy(p, n);
    if (*out == NULL) {
        (void)snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* One manifest entry @f (number @i) as JSON into *@out, and the bytes it costs. 0, or -1 with
 * @why. */
static int man_entry(const msgpack_object *f, size_t i, json_t **out, size_t *cost, char *why,
                     size_t whylen)
{
    static const char *const types[] = { "file", "dir", "symlink", NULL };
    json_t *path = NULL, *type = NULL, *sha = NULL, *target = NULL;
    char what[160];

    *out = NULL;
    if (f->type != MSGPACK_OBJECT_MAP) {
        (void)snprintf(why, whylen, "files entry %zu is not a map", i);
        return -1;
    }
    if (man_str(f, "path", true, STR_MAX, false, NULL, &path, what, sizeof what) < 0 ||
        man_str(f, "type", true, 16, false, types, &type, what, sizeof what) < 0 ||
        man_str(f, "sha256", false, 64, true, NULL, &sha, what, sizeof what) < 0 ||
        man_str(f, "target", false, STR_MAX, false, NULL, &target, what, sizeof what) < 0) {
        json_decref(path);
        json_decref(type);
        json_decref(sha);
        (void)snprintf(why, whylen, "files entry %zu: %s", i, what);
        return -1;
    }
    *cost = MANIFEST_PER_FILE + json_string_length(path) + json_string_length(type) +
            (sha != NULL ? 64 : 0) + (target != NULL ? json_string_length(target) : 0);
    *out = json_pack("{s:o, s:o, s:I, s:I}", "path", path, "type", type, "size",
                     (json_int_t)mp_u64(sbx_obj_get(f, "size")), "mode",
                     /* permission bits only (PROTOCOL.md 19.5) */
                     (json_int_t)(mp_u64(sbx_obj_get(f, "mode")) & 07777));
    if (*out == NULL) {
        json_decref(sha);
        json_decref(target);
        (void)snprintf(why, whylen, "out of memory");
        return -1;
    }
    if (sha != NULL) {
        (void)json_object_set_new(*out, "sha256", sha);
    }
    if (target != NULL) {
        (void)json_object_set_new(*out, "target", target);
    }
    return 0;
}

/*
 * A pack.manifest part: its entries joined into j->manifest (at most MANIFEST_FILES kept), the
 * summary of the last part added. Each string is checked before it is kept (what breaks
 * PROTOCOL.md 19.5 fails the job), and the entries are held to MANIFEST_BYTES_MAX, counted as
 * their strings plus MANIFEST_PER_FILE each, about what they take in manifest.json: an agent
 * could otherwise send parts without end. MANIFEST_FILES entries of 150-byte paths with a sha256
 * cost 54 MiB.
 */
static void on_manifest(struct job *j, const msgpack_object *p)
{
    static const char *const formats[] = { "tar.gz", NULL };
    const msgpack_object *files = sbx_obj_get(p, "files");
    const msgpack_object *last = sbx_obj_get(p, "last");
    char why[256];

    if (j->manifest == NULL && (j->manifest = json_pack("{s:[]}", "files")) == NULL) {
        job_fail(j, "keeping the manifest: out of memory");
        return;
    }
    json_t *arr = json_object_get(j->manifest, "files");
    if (files != NULL && files->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < files->via.array.size; i++) {
            json_t *e;
            size_t cost = 0;

            if (json_array_size(arr) >= MANIFEST_FILES) {
                break;
            }
            if (man_entry(&files->via.array.ptr[i], json_array_size(arr), &e, &cost, why,
                          sizeof why) < 0) {
                job_fail(j, "the agent's pack.manifest is malformed: %s", why);
                return;
            }
            j->manifest_bytes += cost;
            if (j->manifest_bytes > MANIFEST_BYTES_MAX) {
                json_decref(e);
                job_fail(j, "the agent's pack.manifest is larger than %u MiB (%zu entries)",
                         MANIFEST_BYTES_MAX >> 20, json_array_size(arr));
                return;
            }
            if (json_array_append_new(arr, e) < 0) {
                job_fail(j, "keeping the manifest: out of memory");
                return;
            }
        }
    }
    if (last != NULL && last->type == MSGPACK_OBJECT_BOOLEAN && last->via.boolean) {
        json_t *format = NULL, *sha = NULL;
        if (man_str(p, "format", true, 16, false, formats, &format, why, sizeof why) < 0 ||
            man_str(p, "archive_sha256", true, 64, true, NULL, &sha, why, sizeof why) < 0) {
            json_decref(format);
            job_fail(j, "the agent's pack.manifest is malformed: %s", why);
            return;
        }
        (void)json_object_set(j->manifest, "entrypoint", json_object_get(j->r->spec, "entrypoint"));
        (void)json_object_set(j->manifest, "args", json_object_get(j->r->spec, "args"));
        (void)json_object_set_new(j->manifest, "format", format);
        static const char *const nums[] = { "file_count", "total_size", "archive_size" };
        for (size_t i = 0; i < 3; i++) {
            (void)json_object_set_new(j->manifest, nums[i],
                                      json_integer((json_int_t)mp_u64(sbx_obj_get(p, nums[i]))));
        }
        (void)json_object_set_new(j->manifest, "archive_sha256", sha);
    }
}

/* A pack.progress note: the build's exit and the start of the scan are logged, each once (an
 * agent that alternated phases would otherwise add a line per note). */
static void on_progress(struct job *j, const msgpack_object *p)
{
    struct rev *r = j->r;
    char phase[16];

    /* A hostile agent may leave phase out: sbx_obj_cstr takes a missing field as absent. */
    if (sbx_obj_cstr(sbx_obj_get(p, "phase"), phase, sizeof phase) < 0) {
        return;
    }
    if (strcmp(phase, "build") == 0 && !j->logged_build) {
        struct sbx_exit x;
        const msgpack_object *e = sbx_obj_get(p, "exit");
        j->logged_build = true;
        lines_flush(r, &j->lb_out);
        lines_flush(r, &j->lb_err);
        if (e != NULL && sbx_exit_read(e, &x, &(struct sbx_err){ 0 }) == 0) {
            logf_(r, x.exited && x.code == 0 ? "info" : "error", "build command finished: %s %d%s",
                  x.exited ? "exit status" : "signal", x.exited ? x.code : x.signo,
                  x.timed_out ? " (timed out)" : "");
        }
    } else if (strcmp(phase, "scan") == 0 && !j->logged_scan) {
        j->logged_scan = true;
        logf_(r, "info", "packaging %s", spec_str(r, "root"));
    }
}

static void lu_event(struct gw_link_user *u, const struct sbx_event *ev)
{
    struct job *j = CONTAINER(u, struct job, lu);

    if (j->r == NULL) {
        return;
    }
    if (ev->kind == SBX_EV_EXIT) {
        /* One exit per process: an agent that repeats proc.exit (while the output streams are
         * still open, so the job goes on) would otherwise log "the app exited" each time. */
        if (j->proc_id != 0 && ev->r.exit.id == j->proc_id && !j->exited &&
            (j->phase == J_INSTALL || j->phase == J_RUN)) {
            j->exited = true;
            j->exit_status = sbx_exit_status(&ev->r.exit);
            if (j->phase == J_RUN) {
                logf_(j->r, "error", "the app exited: %s %d",
                      ev->r.exit.exited ? "exit status" : "signal",
                      ev->r.exit.exited ? ev->r.exit.code : ev->r.exit.signo);
            }
            proc_check_done(j);
        }
        return;
    }
    if (ev->kind == SBX_EV_TRANSFER_DONE) {
        if (j->phase == J_UPLOAD && ev->stream == j->up_sid && j->up_sid != 0) {
            const struct sbx_transfer_done *d = ev->done;
            j->up_sid = 0;
            if (d->failed) {
                job_fail(j, "unpacking the archive in the revision's sandbox failed: %s: %s",
                         d->error.code, d->error.msg);
                return;
            }
            logf_(j->r, "info", "unpacked %" PRIu64 " entries into %s", d->files, j->r->dest);
            j->phase = J_RUN;
            job_step(j);
        }
        return;
    }
    if (ev->kind != SBX_EV_NOTIFY || ev->method == NULL || j->phase != J_PACK || j->pack_id == 0 ||
        ev->result == NULL) {
        return;
    }
    if (mp_u64(sbx_obj_get(ev->result, "id")) != j->pack_id) {
        return;
    }
    if (strcmp(ev->method, "pack.manifest") == 0) {
        on_manifest(j, ev->result);
    } else if (strcmp(ev->method, "pack.progress") == 0) {
        on_progress(j, ev->result);
    }
}

/* --- upload -------------------------------------------------------------------------------- */

static void upload_feed(struct job *j)
{
    uint8_t *buf;
    struct sbx_err err;

    if (j->phase != J_UPLOAD || j->c == NULL || j->up_sid == 0 || j->up_ended || j->fd < 0) {
        return;
    }
    buf = malloc(UPLOAD_CHUNK);
    if (buf == NULL) {
        return; /* retried at the next drain */
    }
    while (sbx_conn_queued(j->c, j->up_sid) < UPLOAD_HIGH) {
        ssize_t n = read(j->fd, buf, UPLOAD_CHUNK);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            free(buf);
            job_fail(j, "reading the archive: %s", strerror(errno));
            return;
        }
        if (n == 0) {
            j->up_ended = true;
            (void)close(j->fd);
            j->fd = -1;
            if (sbx_conn_end(j->c, j->up_sid, NULL, &err) < 0) {
                free(buf);
                job_fail(j, "ending the upload: %s", err.msg);
                return;
            }
            break;
        }
        if (sbx_conn_write(j->c, j->up_sid, buf, (size_t)n, &err) < 0) {
            free(buf);
            job_fail(j, "uploading the archive: %s: %s", err.code, err.msg);
            return;
        }
    }
    free(buf);
}

static void st_up_fn(struct gw_link_stream *st, const struct sbx_event *ev)
{
    struct job *j = CONTAINER(st, struct job, st_up);

    if (j->r == NULL) {
        return;
    }
    if (ev->kind == SBX_EV_CREDIT) {
        upload_feed(j);
    } else if (ev->kind == SBX_EV_CANCEL) {
        j->up_sid = 0;
        job_fail(j, "the agent refused the archive: %s",
                 ev->error != NULL ? ev->error->msg : "the upload was cancelled");
    } else if (ev->kind == SBX_EV_TRANSFER_DONE) {
        lu_event(&j->lu, ev);
    }
}

static void lu_drained(struct gw_link_user *u)
{
    upload_feed(CONTAINER(u, struct job, lu));
}

/* --- probing the app through the ingress ----------------------------------------------------- */

static void probe_schedule(struct job *j);

static void probe_result(struct probe *p, bool ok)
{
    struct job *j = p->j;

    probe_close(p);
    if (j == NULL) {
        return;
    }
    j->probe = NULL;
    if (j->r == NULL || j->phase != J_RUN) {
        job_maybe_free(j);
        return;
    }
    if (ok) {
        job_succeed(j);
        return;
    }
    if (gw_now_ms() - j->run_started_ms > READY_MS) {
        job_fail(j, "the app did not answer HTTP within %d s of its start", READY_MS / 1000);
        return;
    }
    probe_schedule(j);
}

static void probe_timeout(uv_timer_t *t)
{
    probe_result(t->data, false);
}

static void probe_alloc(uv_handle_t *h, size_t sug, uv_buf_t *buf)
{
    struct probe *p = h->data;

    (void)sug;
    *buf = uv_buf_init(p->resp + p->rlen, (unsigned)(sizeof p->resp - 1 - p->rlen));
}

/* The status line of the answer: the app answered unless the ingress said it could not reach
 * it (502, 503, 504). */
static void probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct probe *p = s->data;
    int status = 0;

    (void)buf;
    if (p->done) {
        return;
    }
    if (n > 0) {
        p->rlen += (size_t)n;
        p->resp[p->rlen] = '\0';
        if (strchr(p->resp, '\n') == NULL && p->rlen < sizeof p->resp - 1) {
            return;
        }
    } else if (n == 0) {
        return;
    }
    if (sscanf(p->resp, "HTTP/1.%*1[01] %3d", &status) == 1 && status >= 100 && status != 502 &&
        status != 503 && status != 504) {
        probe_result(p, true);
        return;
    }
    probe_result(p, false);
}

static void probe_written(uv_write_t *w, int status)
{
    struct probe *p = w->data;

    if (p->done) {
        return;
    }
    if (status < 0 || uv_read_start((uv_stream_t *)&p->tcp, probe_alloc, probe_read) < 0) {
        probe_result(p, false);
    }
}

static void probe_connected(uv_connect_t *c, int status)
{
    struct probe *p = c->data;

    if (p->done) {
        return;
    }
    uv_buf_t b = uv_buf_init(p->req, (unsigned)strlen(p->req));
    p->write.data = p;
    if (status < 0 || uv_write(&p->write, (uv_stream_t *)&p->tcp, &b, 1, probe_written) < 0) {
        probe_result(p, false);
    }
}

/* Where the ingress listens (--http-listen, a wildcard address as loopback) and the port in
 * @url ("http://DOMAIN:PORT"). */
static int probe_addr(struct gw *g, const char *url, struct sockaddr_storage *ss)
{
    char host[256];
    const char *listen = g->opt.http_listen;
    const char *colon = strrchr(url, ':');
    const char *lc = listen != NULL ? strrchr(listen, ':') : NULL;
    int port = colon != NULL ? atoi(colon + 1) : 0;

    if (lc == NULL || port <= 0 || port > 65535 || (size_t)(lc - listen) >= sizeof host) {
        return -1;
    }
    memcpy(host, listen, (size_t)(lc - listen));
    host[lc - listen] = '\0';
    if (host[0] == '[') {
        size_t n = strlen(host);
        memmove(host, host + 1, n);
        if (n >= 2 && host[n - 2] == ']') {
            host[n - 2] = '\0';
        }
        if (strcmp(host, "::") == 0 || host[0] == '\0') {
            (void)snprintf(host, sizeof host, "::1");
        }
        return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) < 0 ? -1 : 0;
    }
    if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0') {
        (void)snprintf(host, sizeof host, "127.0.0.1");
    }
    return uv_ip4_addr(host, port, (struct sockaddr_in *)ss) < 0 ? -1 : 0;
}

static void probe_start(struct job *j)
{
    struct sockaddr_storage ss;
    struct probe *p;
    const char *hostport = j->url + strlen("http://");

    if (strncmp(j->url, "http://", 7) != 0 || probe_addr(j->g, j->url, &ss) < 0) {
        job_fail(j, "cannot reach the HTTP ingress at %s", j->url);
        return;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL || uv_tcp_init(j->g->loop, &p->tcp) < 0) {
        free(p);
        probe_schedule(j);
        return;
    }
    (void)uv_timer_init(j->g->loop, &p->timeout); /* cannot fail */
    p->handles = 2;
    p->j = j;
    p->tcp.data = p->timeout.data = p->connect.data = p;
    j->probe = p;
    (void)snprintf(p->req, sizeof p->req,
                   "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: sbx-gateway-deploy\r\n"
                   "Connection: close\r\n\r\n",
                   hostport);
    (void)uv_timer_start(&p->timeout, probe_timeout, PROBE_TRY_MS, 0);
    if (uv_tcp_connect(&p->connect, &p->tcp, (struct sockaddr *)&ss, probe_connected) < 0) {
        probe_result(p, false);
    }
}

static void probe_tick(uv_timer_t *t)
{
    struct job *j = t->data;

    if (j->r != NULL && j->phase == J_RUN && j->probe == NULL) {
        probe_start(j);
    }
}

/* Run @cb once, @ms from now, on the job's timer (J_RUN's probes, J_PACK's retries). */
static void job_timer(struct job *j, uv_timer_cb cb, uint64_t ms)
{
    if (!j->timer_open) {
        (void)uv_timer_init(j->g->loop, &j->timer); /* cannot fail */
        j->timer.data = j;
        j->timer_open = true;
    }
    (void)uv_timer_start(&j->timer, cb, ms, 0);
}

static void probe_schedule(struct job *j)
{
    job_timer(j, probe_tick, PROBE_EVERY_MS);
}

/* --- the steps ----------------------------------------------------------------------------- */

static void req_fn(struct gw_link_req *rq, const struct sbx_event *ev)
{
    struct job *j = CONTAINER(rq, struct job, req);
    struct rev *r = j->r;
    struct sbx_err err;

    j->pending--;
    if (ev->call == SBX_CALL_PACK_CREATE) {
        struct sbx_conn *c = j->pack_c;

        j->pack_c = NULL;
        if ((r == NULL || j->phase == J_DONE) && ev->error == NULL && c != NULL) {
            /* Answered after the job ended (it failed or the gateway stops): the agent would
             * pack on for nobody, holding a max_packs slot. (The link that delivers an answer
             * is alive, and so is its connection.) */
            pack_cancel(c, ev->r.pack.archive, ev->r.pack.build_out, ev->r.pack.build_err);
        }
    }
    if (r == NULL || j->phase == J_DONE) {
        job_maybe_free(j);
        return;
    }
    if (ev->error != NULL) {
        switch (ev->call) {
        case SBX_CALL_PROC_SPAWN:
            job_fail(j, "cannot start %s: %s: %s%s%s",
                     j->phase == J_RUN ? "deno" : "the install command", ev->error->code,
                     ev->error->msg, ev->error->path[0] ? ": " : "", ev->error->path);
            break;
        case SBX_CALL_PACK_CREATE:
            if (strcmp(ev->error->code, SBX_E_LIMIT) == 0 &&
                strcmp(ev->error->limit, "max_packs") == 0) {
                /* The agent frees a cancelled pack job's slot once its archive thread stopped,
                 * a moment after the cancel, and pack_done gave our slot to this job at once:
                 * ask again soon, within the building stage's deadline. */
                if (!j->pack_retried) {
                    logf_(r, "info",
                          "the agent still counts a pack job that ended; asking "
                          "again until it frees the slot");
                    j->pack_retried = true;
                }
                job_timer(j, pack_retry, PACK_RETRY_MS);
                break;
            }
            if (strcmp(ev->error->code, "ENOENT") == 0 || strcmp(ev->error->code, "ENOTDIR") == 0) {
                job_fail(j, "the path to deploy, %s, is not a directory: %s", spec_str(r, "root"),
                         ev->error->msg);
            } else {
                job_fail(j, "pack.create failed: %s: %s", ev->error->code, ev->error->msg);
            }
            break;
        case SBX_CALL_TRANSFER_UPLOAD_TREE:
            job_fail(j, "cannot unpack the archive in the revision's sandbox: %s: %s",
                     ev->error->code, ev->error->msg);
            break;
        default:
            job_fail(j, "%s failed: %s: %s", ev->method ? ev->method : "a request", ev->error->code,
                     ev->error->msg);
        }
        return;
    }
    switch (ev->call) {
    case SBX_CALL_PROC_SPAWN:
        j->proc_id = ev->r.spawn.id;
        j->out_sid = ev->r.spawn.out;
        j->err_sid = ev->r.spawn.err;
        j->out_done = j->out_sid == 0;
        j->err_done = j->err_sid == 0;
        j->st_out.fn = st_out_fn;
        j->st_err.fn = st_err_fn;
        if (j->out_sid != 0) {
            (void)sbx_conn_stream_set_user(j->c, j->out_sid, &j->st_out);
        }
        if (j->err_sid != 0) {
            (void)sbx_conn_stream_set_user(j->c, j->err_sid, &j->st_err);
        }
        if (j->phase == J_RUN) {
            char why[256];
            r->run_pid = j->proc_id;
            if (gw_expose_new_domain(j->rsb, r->domain, sizeof r->domain, why, sizeof why) < 0 ||
                gw_expose_map(j->rsb, r->domain, 0, j->proc_id, why, sizeof why) < 0 ||
                gw_ingress_url(j->g, r->domain, j->url, sizeof j->url, why, sizeof why) < 0) {
                r->domain[0] = '\0';
                job_fail(j, "cannot expose the app: %s", why);
                return;
            }
            logf_(r, "info", "started deno (process %" PRIu32 "); exposed as %s", j->proc_id,
                  r->domain);
            j->run_started_ms = gw_now_ms();
            rev_save(r);
            probe_schedule(j);
        }
        return;
    case SBX_CALL_PACK_CREATE:
        j->pack_id = ev->r.pack.id;
        j->arch_sid = ev->r.pack.archive;
        j->out_sid = ev->r.pack.build_out;
        j->err_sid = ev->r.pack.build_err;
        j->st_arch.fn = st_arch_fn;
        j->st_out.fn = st_out_fn;
        j->st_err.fn = st_err_fn;
        (void)sbx_conn_stream_set_user(j->c, j->arch_sid, &j->st_arch);
        if (j->out_sid != 0) {
            (void)sbx_conn_stream_set_user(j->c, j->out_sid, &j->st_out);
        }
        if (j->err_sid != 0) {
            (void)sbx_conn_stream_set_user(j->c, j->err_sid, &j->st_err);
        }
        return;
    case SBX_CALL_TRANSFER_UPLOAD_TREE:
        j->up_sid = ev->r.stream.stream;
        j->st_up.fn = st_up_fn;
        (void)sbx_conn_stream_set_user(j->c, j->up_sid, &j->st_up);
        upload_feed(j);
        return;
    default:
        (void)err;
        return;
    }
}

static void on_rsb_ready(struct gw_sandbox *sb, void *user)
{
    struct job *j = user;

    j->waiting = false;
    if (j->r == NULL) {
        job_maybe_free(j);
        return;
    }
    if (sb->state != GW_SB_READY) {
        j->rsb = NULL;
        job_fail(j, "the revision's sandbox did not start: %s", sb->why);
        return;
    }
    j->phase = J_UPLOAD;
    job_link(j, sb);
}

/* Start the boot of the revision's sandbox. */
static void boot(struct job *j)
{
    struct rev *r = j->r;
    struct gw *g = j->g;
    char why[512];
    int status = 0;
    const char *code = NULL;

    job_stage(j, ST_DEPLOYING);
    logf_(r, "info", "starting a sandbox for revision %s", r->id);
    if (g->opt.http_listen == NULL) {
        job_fail(j, "no HTTP ingress to serve the app: start sbx-gateway with --http-listen");
        return;
    }
    json_t *config =
        json_pack("{s:I, s:{s:s, s:s}}", "stop_at_ms", (json_int_t)(gw_now_ms() + GW_DEPLOY_RUN_MS),
                  "labels", "sbx-revision", r->id, "sbx-app", spec_str(r, "app"));
    struct gw_sandbox *sb =
        config != NULL ? gw_sandbox_create_ex(g, config, &status, &code, why, sizeof why) : NULL;
    json_decref(config);
    if (sb == NULL) {
        job_fail(j, "cannot create the revision's sandbox: %s",
                 config == NULL ? "out of memory" : why);
        return;
    }
    j->rsb = sb;
    (void)snprintf(r->run_sandbox, sizeof r->run_sandbox, "%s", sb->id);
    (void)snprintf(r->dest, sizeof r->dest, "%s/.sbx-revisions/%s",
                   g->opt.cwd != NULL ? g->opt.cwd : "/home/app", r->id);
    rev_save(r);
    j->waiting = true;
    gw_sandbox_wait(sb, on_rsb_ready, j); /* may call back at once */
}

/* pack.create for @j, which holds a packing slot and has the archive file open. */
static void pack_send(struct job *j)
{
    struct rev *r = j->r;
    const char *build = spec_str(r, "buildCommand");
    const char *argv[] = { "sh", "-c", build, NULL };
    struct sbx_spawn_params bp = { 0 };
    json_t *args = json_object_get(r->spec, "args");
    const char *av[ARGS_MAX];
    struct sbx_err err;
    size_t i;
    json_t *v;

    json_array_foreach(args, i, v)
    {
        av[i] = json_string_value(v);
    }
    bp.argv = argv;
    bp.cwd = spec_str(r, "path");
    bp.timeout_ms = CMD_TIMEOUT_MS;
    struct sbx_pack_params pp = {
        .path = spec_str(r, "root"),
        .format = "tar.gz",
        .build = build != NULL ? &bp : NULL,
        .entrypoint = spec_str(r, "entrypoint"),
        .args = json_array_size(args) > 0 ? av : NULL,
        .nargs = (uint32_t)json_array_size(args),
    };
    j->logged_build = j->logged_scan = false;
    if (sbx_pack_create(j->c, &pp, &j->req, NULL, &err) < 0) {
        job_fail(j, "cannot start pack.create: %s: %s", err.code, err.msg);
        return;
    }
    j->pack_c = j->c;
    j->pending++;
}

/* The job's timer after the agent refused pack.create with max_packs: ask again. */
static void pack_retry(uv_timer_t *t)
{
    struct job *j = t->data;

    if (j->r != NULL && j->phase == J_PACK && j->c != NULL) {
        pack_send(j);
        if (j->link != NULL) {
            gw_link_flush(j->link); /* (a timer: no link callback flushes for us) */
        }
    }
}

/* Do what the job's phase needs next (the link is up where one is needed). */
static void job_step(struct job *j)
{
    struct rev *r = j->r;
    struct sbx_err err;

    if (r == NULL) {
        return;
    }
    switch (j->phase) {
    case J_LINK:
        stage_end(r, ST_PREPARING, SS_SUCCEEDED);
        if (spec_str(r, "installCommand") != NULL) {
            const char *argv[] = { "sh", "-c", spec_str(r, "installCommand"), NULL };
            j->phase = J_INSTALL;
            job_stage(j, ST_INSTALLING);
            logf_(r, "info", "running the install command: %s", argv[2]);
            spawn_sh(j, argv, spec_str(r, "path"));
            return;
        }
        stage_skip(r, ST_INSTALLING);
        j->phase = J_PACK;
        __attribute__((fallthrough));
    case J_PACK: {
        char dir[4200], tmp[4300];

        if (!j->packing && packing_on(r->d, j->link) >= PACK_PER_LINK) {
            if (!j->pack_wait) {
                logf_(r, "info",
                      "waiting for a packing slot (%d builds of this sandbox are packing)",
                      PACK_PER_LINK);
            }
            j->pack_wait = true;
            uv_timer_stop(&j->deadline); /* waiting is no stage: see job_stage */
            return;
        }
        j->packing = true;
        job_stage(j, ST_BUILDING);
        if (spec_str(r, "buildCommand") != NULL) {
            logf_(r, "info", "running the build command: %s", spec_str(r, "buildCommand"));
        }
        (void)rev_dir(r, dir, sizeof dir);
        (void)snprintf(tmp, sizeof tmp, "%s/archive.tar.gz.tmp", dir);
        j->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (j->fd < 0) {
            job_fail(j, "%s: %s", tmp, strerror(errno));
            return;
        }
        j->tmp_made = true;
        pack_send(j);
        return;
    }
    case J_BOOT:
        boot(j);
        return;
    case J_UPLOAD: {
        char dir[4200], path[4300];
        (void)rev_dir(r, dir, sizeof dir);
        (void)snprintf(path, sizeof path, "%s/archive.tar.gz", dir);
        j->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (j->fd < 0) {
            job_fail(j, "%s: %s", path, strerror(errno));
            return;
        }
        j->up_ended = false;
        if (sbx_transfer_upload_tree(j->c, r->dest, "gzip", false, NULL, &j->req, NULL, &err) < 0) {
            job_fail(j, "cannot start the upload: %s: %s", err.code, err.msg);
            return;
        }
        j->pending++;
        return;
    }
    case J_RUN: {
        json_t *args = json_object_get(r->spec, "args");
        const char *argv[ARGS_MAX + 5];
        size_t n = 0, i;
        json_t *v;

        argv[n++] = "deno";
        argv[n++] = "run";
        argv[n++] = "-A";
        argv[n++] = spec_str(r, "entrypoint");
        json_array_foreach(args, i, v)
        {
            argv[n++] = json_string_value(v);
        }
        argv[n] = NULL;
        spawn_sh(j, argv, r->dest);
        return;
    }
    default:
        return;
    }
}

/* Create the job of @r and start it. */
static void job_start(struct rev *r)
{
    struct gw_deploy *d = r->d;
    struct job *j = calloc(1, sizeof(*j));
    struct gw_sandbox *sb;

    r->status = R_BUILDING;
    r->stages[ST_QUEUED] = (struct stage_rec){ SS_SUCCEEDED, r->created_ms, gw_now_ms() };
    if (j == NULL) {
        stage_begin(r, ST_PREPARING, NULL);
        (void)snprintf(r->error, sizeof r->error, "out of memory");
        r->status = R_FAILED;
        r->finished_ms = gw_now_ms();
        stage_end(r, ST_PREPARING, SS_ERRORED);
        return;
    }
    j->g = d->g;
    j->r = r;
    j->fd = -1;
    j->phase = J_LINK;
    j->req.fn = req_fn;
    j->lu.up = lu_up;
    j->lu.down = lu_down;
    j->lu.event = lu_event;
    j->lu.drained = lu_drained;
    (void)uv_timer_init(d->g->loop, &j->deadline); /* cannot fail */
    j->deadline.data = j;
    j->deadline_open = true;
    job_stage(j, ST_PREPARING);
    r->job = j;
    d->njobs++;
    logf_(r, "info", "deploying %s from sandbox %s (revision %s)", spec_str(r, "root"),
          r->sandbox_id, r->id);
    sb = gw_sandbox_find(d->g, r->sandbox_id);
    if (sb == NULL || sb->state != GW_SB_READY) {
        job_fail(j, "sandbox %s is not running", r->sandbox_id);
        return;
    }
    job_link(j, sb);
}

/* --- the request --------------------------------------------------------------------------- */

/* A relative path without "..", NUL, or an empty component beyond a trailing slash. */
static bool rel_path_ok(const char *s, size_t len)
{
    if (len == 0 || len > STR_MAX || strlen(s) != len || s[0] == '/') {
        return false;
    }
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            return false;
        }
        p += n;
        if (*p == '/') {
            p++;
        }
    }
    return true;
}

static bool app_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > APP_MAX) {
        return false;
    }
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.')) {
            return false;
        }
    }
    return true;
}

/* A string member that may be absent or null (*out NULL then). -1 when it is another type,
 * longer than @max, or holds a NUL. */
static int opt_str(json_t *body, const char *key, size_t max, const char **out)
{
    json_t *v = json_object_get(body, key);

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

#define BAD(...)                                                                                   \
    do {                                                                                           \
        (void)snprintf(why, whylen, __VA_ARGS__);                                                  \
        json_decref(spec);                                                                         \
        return NULL;                                                                               \
    } while (0)

/* The deploy body checked and normalized into a spec, or NULL with @why. */
static json_t *parse_body(struct gw *g, json_t *body, char *why, size_t whylen)
{
    const char *app, *entry, *path, *mode, *preset, *install, *build, *bdir;
    json_t *spec = NULL;
    json_t *v;
    static const char *const presets[] = { "astro",      "fresh",     "lume",
                                           "nextjs",     "nuxt",      "remix",
                                           "solidstart", "sveltekit", "tanstackstart" };

    if (!json_is_object(body)) {
        BAD("the body must be a JSON object");
    }
    if (opt_str(body, "app", APP_MAX, &app) < 0 || app == NULL || !app_ok(app)) {
        BAD("app: required, 1 to %d characters of [A-Za-z0-9._-]", APP_MAX);
    }
    if (opt_str(body, "entrypoint", STR_MAX, &entry) < 0 ||
        (entry != NULL && !rel_path_ok(entry, strlen(entry)))) {
        BAD("entrypoint: a relative path inside the deployed directory (no \"..\")");
    }
    if (opt_str(body, "path", STR_MAX, &path) < 0 || (path != NULL && path[0] == '\0')) {
        BAD("path: a directory path (absolute, or relative to %s)",
            g->opt.cwd ? g->opt.cwd : "/home/app");
    }
    if (opt_str(body, "mode", 16, &mode) < 0 ||
        (mode != NULL && strcmp(mode, "none") != 0 && strcmp(mode, "local") != 0)) {
        BAD("mode: \"none\" or \"local\"");
    }
    bool local = mode != NULL && strcmp(mode, "local") == 0;
    if (opt_str(body, "frameworkPreset", 64, &preset) < 0) {
        BAD("frameworkPreset: a string");
    }
    if (preset != NULL && preset[0] != '\0') {
        bool known = false;
        for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
            known = known || strcmp(preset, presets[i]) == 0;
        }
        BAD("frameworkPreset: %s%s%s", known ? "\"" : "unknown preset", known ? preset : "",
            known ? "\" is not supported by sbx-gateway: give installCommand and buildCommand "
                    "instead"
                  : "");
    }
    if (opt_str(body, "installCommand", CMD_MAX, &install) < 0) {
        BAD("installCommand: a string of at most %u bytes", CMD_MAX);
    }
    if (opt_str(body, "buildCommand", CMD_MAX, &build) < 0) {
        BAD("buildCommand: a string of at most %u bytes", CMD_MAX);
    }
    if (opt_str(body, "buildDirectory", STR_MAX, &bdir) < 0 ||
        (bdir != NULL && !rel_path_ok(bdir, strlen(bdir)))) {
        BAD("buildDirectory: a relative path inside path (no \"..\")");
    }
    if (!local && (install != NULL || build != NULL || bdir != NULL)) {
        BAD("installCommand, buildCommand and buildDirectory need mode \"local\"");
    }
    if (install != NULL && install[0] == '\0') {
        install = NULL;
    }
    if (build != NULL && build[0] == '\0') {
        build = NULL;
    }
    for (const char *k = "production"; k != NULL;
         k = strcmp(k, "production") == 0 ? "preview" : NULL) {
        v = json_object_get(body, k);
        if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
            BAD("%s: true or false", k);
        }
    }
    json_t *args = json_array();
    if (args == NULL) {
        BAD("out of memory");
    }
    v = json_object_get(body, "args");
    if (v != NULL && !json_is_null(v)) {
        size_t i;
        json_t *a;
        size_t total = 0;
        if (!json_is_array(v) || json_array_size(v) > ARGS_MAX) {
            json_decref(args);
            BAD("args: an array of at most %d strings", ARGS_MAX);
        }
        json_array_foreach(v, i, a)
        {
            if (!json_is_string(a) || json_string_length(a) > STR_MAX ||
                strlen(json_string_value(a)) != json_string_length(a)) {
                json_decref(args);
                BAD("args[%zu]: a string of at most %d bytes without NUL", i, STR_MAX);
            }
            total += json_string_length(a);
            (void)json_array_append(args, a);
        }
        if (total > (64u << 10)) {
            json_decref(args);
            BAD("args: more than 64 KiB in all");
        }
    }
    /* The directory: absolute, or relative to --cwd (the SDK sends /home/app). */
    char abs[STR_MAX * 2 + 4], root[STR_MAX * 3 + 8];
    const char *base = g->opt.cwd != NULL ? g->opt.cwd : "/home/app";
    if (path == NULL) {
        path = base;
    }
    if (path[0] == '/') {
        (void)snprintf(abs, sizeof abs, "%s", path);
    } else {
        (void)snprintf(abs, sizeof abs, "%s/%s", base, path);
    }
    if (bdir != NULL) {
        (void)snprintf(root, sizeof root, "%s/%s", abs, bdir);
    } else {
        (void)snprintf(root, sizeof root, "%s", abs);
    }
    if (strlen(root) > STR_MAX) {
        json_decref(args);
        BAD("path: longer than %d bytes", STR_MAX);
    }
    spec = json_pack("{s:s, s:s, s:o, s:s, s:s, s:s, s:b, s:b}", "app", app, "entrypoint",
                     entry != NULL ? entry : "main.ts", "args", args, "path", abs, "root", root,
                     "mode", local ? "local" : "none", "production",
                     !json_is_false(json_object_get(body, "production")), "preview",
                     json_is_true(json_object_get(body, "preview")));
    if (spec == NULL) {
        BAD("out of memory");
    }
    if (install != NULL) {
        (void)json_object_set_new(spec, "installCommand", json_string(install));
    }
    if (build != NULL) {
        (void)json_object_set_new(spec, "buildCommand", json_string(build));
    }
    if (bdir != NULL) {
        (void)json_object_set_new(spec, "buildDirectory", json_string(bdir));
    }
    return spec;
}

#undef BAD

void gw_rest_deploy(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                    struct gw_sandbox *sb)
{
    struct gw_deploy *d = g->deploy;
    char why[1024], id[REV_ID_LEN + 1], dir[4200];
    json_error_t jerr;

    if (d == NULL || d->stopping) {
        gw_rest_error(hc, 503, "UNAVAILABLE", "sbx-gateway is stopping");
        return;
    }
    json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        gw_rest_error(hc, 400, "BAD_REQUEST", "the body is not JSON: %s", jerr.text);
        return;
    }
    json_t *spec = parse_body(g, body, why, sizeof why);
    json_decref(body);
    if (spec == NULL) {
        gw_rest_error(hc, 400, "BAD_REQUEST", "deploy: %s", why);
        return;
    }
    if (sb->state != GW_SB_READY) {
        json_decref(spec);
        gw_rest_error(hc, 409, "SANDBOX_NOT_RUNNING", "sandbox %s is not running", sb->id);
        return;
    }
    if (d->nrevs >= REVS_MAX || d->njobs >= JOBS_MAX) {
        json_decref(spec);
        gw_rest_error(hc, 429, "TOO_MANY_REVISIONS",
                      d->njobs >= JOBS_MAX ? "%d deploys are running already; try again later"
                                           : "this gateway keeps %d revisions already; remove "
                                             "old ones from its data dir's revisions/",
                      d->njobs >= JOBS_MAX ? JOBS_MAX : REVS_MAX);
        return;
    }
    do {
        if (gw_random_chars(id, REV_ID_LEN, GW_ID_ALPHABET) < 0) {
            json_decref(spec);
            gw_rest_error(hc, 500, "INTERNAL", "getrandom: %s", strerror(errno));
            return;
        }
    } while (rev_find(d, id) != NULL);
    (void)snprintf(dir, sizeof dir, "%s/%s", d->dir, id);
    if (mkdir(dir, 0700) < 0) {
        json_decref(spec);
        gw_rest_error(hc, 500, "INTERNAL", "%s: %s", dir, strerror(errno));
        return;
    }
    struct rev *r = rev_new(d, id);
    if (r == NULL) {
        json_decref(spec);
        gw_rest_error(hc, 500, "INTERNAL", "out of memory");
        return;
    }
    r->spec = spec;
    (void)snprintf(r->sandbox_id, sizeof r->sandbox_id, "%s", sb->id);
    r->created_ms = gw_now_ms();
    r->status = R_QUEUED;
    r->stages[ST_QUEUED] = (struct stage_rec){ SS_RUNNING, r->created_ms, 0 };
    rev_save(r);
    if (!g->opt.quiet) {
        gw_log("revision %s: deploying %s of %s as app %s", id, spec_str(r, "root"), sb->id,
               spec_str(r, "app"));
    }
    gw_http_respond_json(hc, 200, NULL, json_pack("{s:s}", "revision_id", id));
    job_start(r);
}

void gw_rest_revision(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                      const char *rev, const char *what)
{
    struct gw_deploy *d = g->deploy;
    struct rev *r = d != NULL && id_valid(rev) ? rev_find(d, rev) : NULL;

    if (r == NULL) {
        gw_rest_error(hc, 404, "REVISION_NOT_FOUND", "revision %.64s not found", rev);
        return;
    }
    if (what[0] == '\0') {
        gw_http_respond_json(hc, 200, NULL, rev_json(r));
    } else if (strcmp(what, "timelines") == 0) {
        gw_http_respond_json(hc, 200, NULL, timelines_json(r));
    } else if (strcmp(what, "progress") == 0) {
        watch(r, hc, req, true);
    } else if (strcmp(what, "build_logs") == 0) {
        watch(r, hc, req, false);
    } else {
        gw_rest_error(hc, 404, "NOT_FOUND", "no such route");
    }
}

/* --- start and stop ------------------------------------------------------------------------ */

static void close_free(uv_handle_t *h)
{
    free(h);
}

int gw_deploy_start(struct gw *g, char *why, size_t whylen)
{
    struct gw_deploy *d = calloc(1, sizeof(*d));
    DIR *dir;
    struct dirent *e;

    if (d == NULL) {
        (void)snprintf(why, whylen, "out of memory");
        return -1;
    }
    d->g = g;
    int n = snprintf(d->dir, sizeof d->dir, "%s/revisions", g->opt.data_dir);
    if (n < 0 || (size_t)n >= sizeof d->dir || (mkdir(d->dir, 0700) < 0 && errno != EEXIST)) {
        (void)snprintf(why, whylen, "%s: %s", d->dir,
                       n < 0 || (size_t)n >= sizeof d->dir ? "path too long" : strerror(errno));
        free(d);
        return -1;
    }
    d->save_timer = malloc(sizeof(*d->save_timer));
    if (d->save_timer == NULL) {
        (void)snprintf(why, whylen, "out of memory");
        free(d);
        return -1;
    }
    (void)uv_timer_init(g->loop, d->save_timer); /* cannot fail */
    d->save_timer->data = d;
    g->deploy = d;
    dir = opendir(d->dir);
    if (dir == NULL) {
        (void)snprintf(why, whylen, "%s: %s", d->dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        if (!id_valid(e->d_name)) {
            continue;
        }
        if (d->nrevs >= REVS_MAX) {
            gw_log("%s: more than %d revisions; %s and later ones are not loaded", d->dir, REVS_MAX,
                   e->d_name);
            break;
        }
        rev_load(d, e->d_name);
    }
    (void)closedir(dir);
    return 0;
}

void gw_deploy_stop(struct gw *g)
{
    struct gw_deploy *d = g->deploy;

    if (d == NULL) {
        return;
    }
    d->stopping = true;
    save_tick(d->save_timer);
    uv_close((uv_handle_t *)d->save_timer, close_free);
    d->save_timer = NULL;
    while (d->revs != NULL) {
        struct rev *r = d->revs;
        d->revs = r->next;
        while (r->watchers != NULL) {
            struct watcher *w = r->watchers;
            gw_http_stream_end(w->hc);
            watcher_free(w);
        }
        if (r->job != NULL) {
            /* The revision stays "building" on disk: the next start marks it failed. */
            job_release(r->job);
        }
        json_decref(r->spec);
        json_decref(r->logs);
        free(r);
    }
    g->deploy = NULL;
    free(d);
}
