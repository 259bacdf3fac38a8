/*
 * pack.create (PROTOCOL.md 19): optionally run a build command with its output streamed, then
 * package a directory into a deterministic tar.gz / tar.zst with a manifest, streamed with
 * progress. The archive is made by an out job (outjob.c) whose thread first waits for the build;
 * ignore rules are gitignore's, matched by glob.c. The job reads the tree as the request's
 * identity and the build runs as a user (PROTOCOL.md §17.1, §19.1), never as root unless asked.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conn.h"
#include "env.h"
#include "fs.h"
#include "glob.h"
#include "outjob.h"
#include "path.h"
#include "proc.h"
#include "sbx/schema.h"
#include "stream.h"
#include "strv.h"
#include "transfer.h"
#include "user.h"

#define PACK_MANIFEST_NAME ".sbx-manifest.json"

/* The largest ignore file read (PROTOCOL.md §19.1): one larger is EFBIG. */
#define PACK_IGNORE_FILE_MAX (1u << 20)
/* The most entries a pack keeps, and bytes of their paths and link targets together. */
#define PACK_ENTRIES_MAX    1000000u
#define PACK_NAME_BYTES_MAX (64u << 20)

/* --- the job ------------------------------------------------------------------------------- */

enum pack_format { PACK_TGZ, PACK_TZST };

struct pack_file {
    char *path; /* relative */
    char *target;
    mode_t mode; /* full st_mode */
    uint64_t size;
    struct timespec mtime;
    char sha[65];
};

struct pack_part {
    struct pack_file *files; /* borrowed from the pack's array */
    size_t n;
    uint32_t part;
};

enum pack_ev_kind { PACK_EV_PROGRESS, PACK_EV_PART };

struct pack_ev {
    enum pack_ev_kind kind;
    const char *phase;
    uint64_t bytes, files;
    struct pack_part part;
};

struct pack {
    struct agent_outjob j;     /* the archive stream */
    struct agent_conn_ref job; /* job.conn: where progress and manifest go (NULL once closed) */
    struct agent_ident who;    /* whom the tree is read as */
    uint32_t id;
    char root[AGENT_FS_PATH_BUF];
    char entrypoint[AGENT_FS_PATH_BUF];
    bool has_entrypoint;
    char **args;
    size_t nargs;
    enum pack_format format;
    struct agent_ignore ig;
    char **ignore_files;      /* the ignore_files param (NULL: the default), until they are read */
    struct agent_proc *build; /* the running build (proc.c), NULL when none or done */
    struct agent_proc_start *start; /* the build while it starts (proc.c), else NULL */
    uint32_t req;                   /* the pack.create request, answered once the build started */
    uint32_t build_out_sid, build_err_sid;
    bool announced; /* the pack.create response (with the stream ids) was sent */
    /* thread start gate (under j.mu) */
    bool go, build_failed;
    char build_msg[128];
    /* thread results */
    struct pack_file *files;
    size_t nfiles, capfiles;
    size_t name_bytes; /* of every entry's path and link target, against PACK_NAME_BYTES_MAX */
    uint64_t total_size;
    size_t sent_upto; /* files already sent in manifest parts */
    uint32_t parts;   /* parts queued */
    uint64_t last_ns; /* progress rate limit */
    int rootfd;
    /* File content on its way into the archive (not thread-local: a static TLS block is set up
     * in every thread the agent has). */
    uint8_t buf[1 << 16];
};

/* Streams a job with a build holds while the build starts: its output and the archive. */
#define PACK_BUILD_STREAMS 3u

/* The hook marks pack jobs among the connection's refs (max_packs). A job whose build is still
 * starting has its start abandoned (build_started then frees it); for a running job the archive
 * stream's gone callback does the work. */
static void pack_conn_gone(struct agent_conn_ref *j)
{
    struct pack *p = agent_container_of(j, struct pack, job);

    if (p->start != NULL) {
        agent_proc_start_abort(p->start);
    }
}

static unsigned pack_count(struct agent_conn *c)
{
    unsigned n = 0;

    for (struct agent_link *l = c->refs.next; l != &c->refs; l = l->next) {
        struct agent_conn_ref *r = agent_container_of(l, struct agent_conn_ref, link);
        if (r->gone == pack_conn_gone) {
            n++;
        }
    }
    return n;
}

/* --- build: an internal process (proc.c) with its stdout / stderr streamed ------------------- */

/* Kill a running build (the job is cancelled): its whole group. */
static void build_kill(struct agent_proc *b)
{
    if (b != NULL && !agent_proc_exited(b)) {
        (void)kill(-b->pid, SIGKILL); /* it may be gone already */
    }
}

/* The job no longer wants its build: kill it, end its streams with @why (NULL: free them
 * unsent), and let the process model drain and reap it alone. */
static void build_abandon(struct pack *p, const struct sbx_err *why)
{
    struct agent_proc *b = p->build;
    struct agent_pipe *pipes[2];

    if (b == NULL) {
        return;
    }
    p->build = NULL;
    b->on_done = NULL;
    b->data = NULL;
    build_kill(b);
    pipes[0] = &b->out;
    pipes[1] = &b->err;
    for (int i = 0; i < 2; i++) {
        if (pipes[i]->stream == NULL) {
            continue;
        }
        if (why != NULL) {
            agent_stream_end(pipes[i]->stream, why, false);
        } else {
            agent_stream_free(pipes[i]->stream);
        }
        agent_pipe_update(pipes[i]); /* detached: drained and discarded until the end */
    }
    agent_proc_forget(b);
}

/* Begin the notification @method about @p: its map of @n fields, "id" the first, is open. NULL
 * when the connection is gone; else agent_conn_send(p->job.conn) sends it. */
static msgpack_packer *pack_notify(struct pack *p, const char *method, uint32_t n)
{
    struct agent_conn *c = p->job.conn;
    msgpack_packer *pk;

    if (c == NULL || c->closing) {
        return NULL;
    }
    pk = agent_conn_begin(c);
    sbx_pack_notify_head(pk, method);
    msgpack_pack_map(pk, n);
    sbx_pack_kv_u64(pk, "id", p->id);
    return pk;
}

static void pack_send_progress(struct pack *p, const char *phase, uint64_t bytes, uint64_t files,
                               const struct agent_proc *b)
{
    msgpack_packer *pk = pack_notify(p, "pack.progress", 4 + (b != NULL));

    if (pk == NULL) {
        return;
    }
    sbx_pack_kv_str(pk, "phase", phase);
    sbx_pack_kv_u64(pk, "bytes", bytes);
    sbx_pack_kv_u64(pk, "files", files);
    if (b != NULL) {
        sbx_pack_cstr(pk, "exit");
        agent_proc_pack_exit(pk, b); /* the full exit map, as for any process (§14.3, §19.4) */
    }
    agent_conn_send(p->job.conn);
}

/* Let the archive thread go (or fail at once). */
static void pack_release_thread(struct pack *p, bool failed)
{
    uv_mutex_lock(&p->j.mu);
    p->go = true;
    p->build_failed = failed;
    uv_cond_broadcast(&p->j.cv);
    uv_mutex_unlock(&p->j.mu);
}

/* The build's exit and output are settled (the process model's on_done): report the exit, let
 * the archive thread go (or fail it). */
static void build_done(struct agent_proc *b)
{
    struct pack *p = b->data;
    bool failed = !WIFEXITED(b->status) || WEXITSTATUS(b->status) != 0;

    b->on_done = NULL;
    b->data = NULL;
    if (failed) {
        if (WIFSIGNALED(b->status)) {
            char sig[32];
            snprintf(p->build_msg, sizeof(p->build_msg), "build failed: killed by %s%s",
                     sbx_signal_name(WTERMSIG(b->status), sig, sizeof(sig)),
                     b->timed_out ? " (timeout)" : "");
        } else {
            snprintf(p->build_msg, sizeof(p->build_msg), "build failed: exit status %d",
                     WEXITSTATUS(b->status));
        }
    }
    if (p->j.s != NULL) {
        pack_send_progress(p, "build", 0, 0, b);
    }
    p->build = NULL;
    agent_proc_forget(b);
    pack_release_thread(p, failed);
}

/* The params of the build map, checked with the request's others before anything runs. */
struct build_req {
    char cwd[AGENT_FS_PATH_BUF];
    char cmd[SBX_ARG_MAX + 1];
    char **argv; /* NULL: sh -c cmd */
    const msgpack_object *env;
    bool clear;
    uint64_t timeout;
    bool has_user;          /* runs as @user; else as the agent (no user named, no default) */
    struct agent_user user; /* build.user, else the request's user, else the workload user */
};

/* build_params without the "build." field prefix. */
static int build_params_in(struct agent *a, const char *root, const msgpack_object *bm,
                           struct build_req *q, struct sbx_err *err)
{
    const msgpack_object *arr = NULL;
    int r;

    q->argv = NULL;
    q->env = NULL;
    q->clear = false;
    q->timeout = 0;
    snprintf(q->cwd, sizeof(q->cwd), "%s", root);
    r = agent_user_param(a, bm, false, &q->user, err);
    if (r < 0) {
        return -1;
    }
    q->has_user = r == 1;
    if (sbx_param_bstr(bm, "cwd", SBX_OPTIONAL, q->cwd, sizeof(q->cwd), err) < 0 ||
        sbx_param_bool(bm, "clear_env", SBX_OPTIONAL, &q->clear, err) < 0 ||
        sbx_param_u64(bm, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &q->timeout, err) < 0 ||
        sbx_param_map(bm, "env", SBX_OPTIONAL, SBX_ENV_MAX, &q->env, err) < 0 ||
        (q->env != NULL && agent_env_check_map(q->env, "env", err) < 0)) {
        return -1;
    }
    r = sbx_param_array(bm, "argv", SBX_OPTIONAL, SBX_ARGV_MAX, &arr, err);
    if (r < 0) {
        return -1;
    }
    if (r > 0) {
        r = sbx_param_bstr(bm, "command", SBX_OPTIONAL, q->cmd, sizeof(q->cmd), err);
        if (r < 0) {
            return -1;
        }
        if (r > 0) {
            return sbx_err_param(err, "build", "build needs argv or command");
        }
        return 0;
    }
    if (arr->via.array.size == 0) {
        return sbx_err_param(err, "argv", "argv must not be empty");
    }
    q->argv = agent_strv_from_array(arr, "argv", SBX_ARG_MAX, 0, err);
    return q->argv != NULL ? 0 : -1;
}

/*
 * Parse the build map @bm of the pack rooted at @root into @q (q->argv is the caller's then). A
 * bad param is named by its path from the request, "build.timeout_ms" (PROTOCOL.md §7.5).
 */
static int build_params(struct agent *a, const char *root, const msgpack_object *bm,
                        struct build_req *q, struct sbx_err *err)
{
    char field[SBX_ERR_FIELD_MAX];

    if (build_params_in(a, root, bm, q, err) == 0) {
        return 0;
    }
    if (err->field[0] != '\0' && strcmp(err->field, "build") != 0) {
        (void)snprintf(field, sizeof(field), "build.%s", err->field);
        (void)snprintf(err->field, sizeof(err->field), "%s", field);
    }
    sbx_err_prefix(err, "build");
    return -1;
}

static void build_started(struct agent_proc *b, const struct sbx_err *e, void *data);

/* "@name=@value" into *@slot (NULL when out of memory). -1 when out of memory. */
static int env_var(char **slot, const char *name, const char *value)
{
    if (asprintf(slot, "%s=%s", name, value) < 0) {
        *slot = NULL;
        return -1;
    }
    return 0;
}

/* Start the build @q describes (its params checked by build_params); frees q->argv. The build
 * is an internal process (proc.c): counted in max_procs, drained and reaped like any other;
 * build_started continues the job once it runs. */
static int build_start(struct pack *p, struct agent_conn *c, struct build_req *q,
                       struct sbx_err *err)
{
    char **argv = q->argv, **envp;
    /* The user's HOME, USER and LOGNAME, as proc.spawn with `user` sets them (§14.1). */
    char *extra[4] = { NULL, NULL, NULL, NULL };
    bool oom = false;

    q->argv = NULL;
    if (argv == NULL && (argv = agent_strv_sh(q->cmd, strlen(q->cmd))) == NULL) {
        return sbx_err_oom(err);
    }
    if (agent_stream_reserve(c, 2, err) < 0) { /* the build's output streams, before it runs */
        agent_strv_free(argv);
        return -1;
    }
    if (q->has_user) {
        int n = 0;
        if (q->user.home[0] != '\0') {
            oom |= env_var(&extra[n++], "HOME", q->user.home) < 0;
        }
        if (q->user.name[0] != '\0') {
            oom |= env_var(&extra[n++], "USER", q->user.name) < 0;
            oom |= env_var(&extra[n++], "LOGNAME", q->user.name) < 0;
        }
    }
    envp = oom ? NULL : agent_env_build(p->j.a, q->clear, q->env, extra);
    for (int i = 0; i < 3; i++) {
        free(extra[i]);
    }
    if (envp == NULL) {
        agent_strv_free(argv);
        return sbx_err_oom(err);
    }
    if (agent_proc_start_internal(c->a, argv, envp, q->cwd, q->has_user ? &q->user : NULL,
                                  q->timeout, build_started, p, &p->start, err) < 0) {
        sbx_err_prefix(err, "build");
        return -1;
    }
    return 0;
}

/* --- scan and archive (thread) -----------------------------------------------------------------
 */

static int pack_progress(struct pack *p, const char *phase, uint64_t bytes, uint64_t files,
                         bool force)
{
    uint64_t now = agent_now_ns();
    struct pack_ev *ev;

    if (!force && now - p->last_ns < 100000000u) {
        return 0;
    }
    p->last_ns = now;
    ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        return sbx_err_oom(&p->j.err);
    }
    ev->kind = PACK_EV_PROGRESS;
    ev->phase = phase;
    ev->bytes = bytes;
    ev->files = files;
    return agent_outjob_event(&p->j, ev);
}

static int pack_add(struct pack *p, const char *rel, const struct stat *st, const char *target)
{
    struct pack_file *f;
    size_t names = strlen(rel) + (target != NULL ? strlen(target) : 0);

    /* Every entry is kept (sorted, then archived and listed in the manifest), so the tree's
     * shape is the agent's memory: a workload's hard links of one file under long names cost it
     * a few hundred bytes of disk apiece and the agent kilobytes. */
    if (p->nfiles >= PACK_ENTRIES_MAX) {
        return sbx_err_limit(&p->j.err, "pack_entries", PACK_ENTRIES_MAX,
                             "the tree has more than %u entries", PACK_ENTRIES_MAX);
    }
    if (names > PACK_NAME_BYTES_MAX - p->name_bytes) {
        return sbx_err_limit(&p->j.err, "pack_names", PACK_NAME_BYTES_MAX,
                             "the tree's paths take more than %u bytes", PACK_NAME_BYTES_MAX);
    }
    p->name_bytes += names;
    if (p->nfiles == p->capfiles) {
        size_t cap = p->capfiles ? p->capfiles * 2 : 256;
        struct pack_file *v = realloc(p->files, cap * sizeof(*v));
        if (v == NULL) {
            return sbx_err_oom(&p->j.err);
        }
        p->files = v;
        p->capfiles = cap;
    }
    f = &p->files[p->nfiles];
    memset(f, 0, sizeof(*f));
    f->path = strdup(rel);
    f->target = target != NULL ? strdup(target) : NULL;
    if (f->path == NULL || (target != NULL && f->target == NULL)) {
        free(f->path);
        free(f->target);
        return sbx_err_oom(&p->j.err);
    }
    f->mode = st->st_mode;
    f->size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0;
    f->mtime = st->st_mtim;
    p->nfiles++;
    p->total_size += f->size;
    return 0;
}

static int pack_scan(struct pack *p, int fd, char *rel, size_t rlen, int depth)
{
    char **names = NULL;
    size_t n = 0;
    int rc = 0;

    if (depth > 256) {
        return sbx_err_sys(&p->j.err, ELOOP, NULL, "tree deeper than 256 levels");
    }
    if (agent_path_list(fd, rlen ? rel : p->root, &names, &n, &p->j.err) < 0) {
        return -1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *name = names[i];
        size_t nl = strlen(name);
        struct stat st;
        char target[PATH_MAX + 1];
        bool link;

        if (rlen == 0 && strcmp(name, PACK_MANIFEST_NAME) == 0) {
            continue;
        }
        if (rlen + nl + 2 > AGENT_FS_PATH_BUF) {
            rc = sbx_err_sys(&p->j.err, ENAMETOOLONG, NULL, "path too long in the pack");
            break;
        }
        if (rlen > 0) {
            rel[rlen] = '/';
        }
        memcpy(rel + rlen + (rlen > 0), name, nl + 1);
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            sbx_err_sys(&p->j.err, errno, NULL, "stat \"%s\"", rel);
            sbx_err_set_path(&p->j.err, rel);
            rc = -1;
            break;
        }
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
            continue; /* other special files are skipped */
        }
        if (agent_ignore_match(&p->ig, rel, S_ISDIR(st.st_mode))) {
            continue;
        }
        link = S_ISLNK(st.st_mode);
        if (link) {
            ssize_t tl = readlinkat(fd, name, target, PATH_MAX);
            if (tl < 0) {
                sbx_err_sys(&p->j.err, errno, NULL, "readlink \"%s\"", rel);
                sbx_err_set_path(&p->j.err, rel);
                rc = -1;
                break;
            }
            target[tl] = '\0';
        }
        rc = pack_add(p, rel, &st, link ? target : NULL);
        if (rc == 0) {
            rc = pack_progress(p, "scan", p->total_size, p->nfiles, false);
        }
        if (rc == 0 && S_ISDIR(st.st_mode)) {
            int sub = agent_path_opendir_at(fd, name);
            if (sub < 0) {
                sbx_err_sys(&p->j.err, errno, NULL, "open directory \"%s\"", rel);
                sbx_err_set_path(&p->j.err, rel);
                rc = -1;
                break;
            }
            rc = pack_scan(p, sub, rel, rlen + nl + (rlen > 0), depth + 1);
            close(sub);
        }
        rel[rlen] = '\0';
    }
    agent_strv_free(names);
    return rc;
}

static int file_cmp(const void *a, const void *b)
{
    return strcmp(((const struct pack_file *)a)->path, ((const struct pack_file *)b)->path);
}

/* Queue the next manifest part (files [sent_upto, upto)). */
static int pack_queue_part(struct pack *p, size_t upto)
{
    struct pack_ev *ev = calloc(1, sizeof(*ev));

    if (ev == NULL) {
        return sbx_err_oom(&p->j.err);
    }
    ev->kind = PACK_EV_PART;
    ev->part.files = p->files + p->sent_upto;
    ev->part.n = upto - p->sent_upto;
    ev->part.part = p->parts++;
    p->sent_upto = upto;
    return agent_outjob_event(&p->j, ev);
}

/* Bytes of a file entry in an encoded manifest part, roughly (for the 2 MiB cap). */
static size_t part_entry_size(const struct pack_file *f)
{
    return 160 + strlen(f->path) + (f->target != NULL ? strlen(f->target) : 0);
}

static int pack_file_data(struct pack *p, struct archive *ar, struct pack_file *f)
{
    uint8_t *buf = p->buf;
    struct sha256_ctx sha;
    uint8_t d[32];
    uint64_t left = f->size;
    struct stat st;
    /* Under the root without following a link in any component, and only a regular file: the
     * tree may have changed since the scan (a FIFO there would hold the job for good). */
    int fd = agent_path_open_file_under(p->rootfd, f->path, &st);

    if (fd < 0) {
        return agent_fs_err_file(&p->j.err, errno, st.st_mode, "open", f->path);
    }
    sha256_init(&sha);
    /* Exactly the size the header announced: a file that grows or shrinks meanwhile fails. */
    while (left > 0) {
        ssize_t n = read(fd, buf, left < sizeof(p->buf) ? left : sizeof(p->buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            sbx_err_sys(&p->j.err, n < 0 ? errno : EIO, NULL, "read \"%s\"%s", f->path,
                        n == 0 ? " (it shrank while packed)" : "");
            sbx_err_set_path(&p->j.err, f->path);
            close(fd);
            return -1;
        }
        sha256_update(&sha, (size_t)n, buf);
        if (archive_write_data(ar, buf, (size_t)n) < 0) {
            close(fd);
            if (!agent_outjob_cancelled(&p->j)) {
                agent_archive_err(&p->j.err, ar, "write the archive");
            }
            return -1;
        }
        left -= (uint64_t)n;
    }
    close(fd);
    sha256_digest(&sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), f->sha);
    return 0;
}

/* JSON string of @s (bytes >= 0x80 of invalid UTF-8 become \u00XX). */
static void json_str(char **out, size_t *len, size_t *cap, const char *s);

static int buf_add(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (*len + n + 1 > c) {
            c *= 2;
        }
        char *b = realloc(*out, c);
        if (b == NULL) {
            return -1;
        }
        *out = b;
        *cap = c;
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
    return 0;
}

static void json_str(char **out, size_t *len, size_t *cap, const char *s)
{
    bool utf8 = sbx_utf8_valid(s, strlen(s));
    char e[8];

    (void)buf_add(out, len, cap, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\') {
            e[0] = '\\';
            e[1] = (char)*c;
            (void)buf_add(out, len, cap, e, 2);
        } else if (*c < 0x20 || (*c >= 0x80 && !utf8)) {
            snprintf(e, sizeof(e), "\\u%04x", *c);
            (void)buf_add(out, len, cap, e, 6);
        } else {
            (void)buf_add(out, len, cap, (const char *)c, 1);
        }
    }
    (void)buf_add(out, len, cap, "\"", 1);
}

static const char *file_type(mode_t m)
{
    return S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "file";
}

static const char *format_name(enum pack_format f)
{
    return f == PACK_TGZ ? "tar.gz" : "tar.zst";
}

/* The manifest stored inside the archive: everything but the archive's own size and hash. */
static char *pack_manifest_json(struct pack *p, size_t *outlen)
{
    char *out = NULL, num[64];
    size_t len = 0, cap = 0;

    (void)buf_add(&out, &len, &cap, "{\"format\":", 10);
    json_str(&out, &len, &cap, format_name(p->format));
    (void)buf_add(&out, &len, &cap, ",\"entrypoint\":", 14);
    if (p->has_entrypoint) {
        json_str(&out, &len, &cap, p->entrypoint);
    } else {
        (void)buf_add(&out, &len, &cap, "null", 4);
    }
    (void)buf_add(&out, &len, &cap, ",\"args\":[", 9);
    for (size_t i = 0; i < p->nargs; i++) {
        if (i > 0) {
            (void)buf_add(&out, &len, &cap, ",", 1);
        }
        json_str(&out, &len, &cap, p->args[i]);
    }
    snprintf(num, sizeof(num), "],\"file_count\":%zu,\"total_size\":%llu,\"files\":[", p->nfiles,
             (unsigned long long)p->total_size);
    (void)buf_add(&out, &len, &cap, num, strlen(num));
    for (size_t i = 0; i < p->nfiles; i++) {
        const struct pack_file *f = &p->files[i];
        const char *head = i > 0 ? ",{\"path\":" : "{\"path\":";
        (void)buf_add(&out, &len, &cap, head, strlen(head));
        json_str(&out, &len, &cap, f->path);
        snprintf(num, sizeof(num), ",\"type\":\"%s\",\"size\":%llu,\"mode\":%u", file_type(f->mode),
                 (unsigned long long)f->size, (unsigned)(f->mode & 07777));
        (void)buf_add(&out, &len, &cap, num, strlen(num));
        if (S_ISREG(f->mode)) {
            (void)buf_add(&out, &len, &cap, ",\"sha256\":\"", 11);
            (void)buf_add(&out, &len, &cap, f->sha, 64);
            (void)buf_add(&out, &len, &cap, "\"", 1);
        }
        if (f->target != NULL) {
            (void)buf_add(&out, &len, &cap, ",\"target\":", 10);
            json_str(&out, &len, &cap, f->target);
        }
        (void)buf_add(&out, &len, &cap, "}", 1);
    }
    if (buf_add(&out, &len, &cap, "]}\n", 3) < 0) {
        free(out);
        return NULL;
    }
    *outlen = len;
    return out;
}

static int pack_archive(struct pack *p)
{
    struct archive *ar = agent_outjob_archive(&p->j, p->format == PACK_TGZ ? AGENT_COMPRESS_GZIP
                                                                           : AGENT_COMPRESS_ZSTD);
    struct archive_entry *e = archive_entry_new();
    uint64_t bytes = 0, part_bytes = 0;
    char *json = NULL;
    size_t jlen;
    int rc = -1;

    if (ar == NULL || e == NULL) {
        goto out;
    }
    if (pack_progress(p, "archive", 0, 0, true) < 0) {
        goto out;
    }
    for (size_t i = 0; i < p->nfiles; i++) {
        struct pack_file *f = &p->files[i];
        archive_entry_clear(e);
        archive_entry_copy_pathname(e, f->path);
        archive_entry_set_mode(e, f->mode);
        archive_entry_set_size(e, (la_int64_t)f->size);
        archive_entry_set_mtime(e, f->mtime.tv_sec, f->mtime.tv_nsec);
        archive_entry_set_uid(e, 0);
        archive_entry_set_gid(e, 0);
        if (f->target != NULL) {
            archive_entry_copy_symlink(e, f->target);
        }
        if (archive_write_header(ar, e) < ARCHIVE_WARN) {
            if (!agent_outjob_cancelled(&p->j)) {
                agent_archive_err(&p->j.err, ar, "write the archive");
            }
            goto out;
        }
        if (S_ISREG(f->mode) && pack_file_data(p, ar, f) < 0) {
            goto out;
        }
        bytes += f->size;
        part_bytes += part_entry_size(f);
        if (i + 1 - p->sent_upto >= 1024 || part_bytes >= (1u << 20)) {
            if (pack_queue_part(p, i + 1) < 0) {
                goto out;
            }
            part_bytes = 0;
        }
        if (pack_progress(p, "archive", bytes, i + 1, false) < 0) {
            goto out;
        }
    }
    /* The manifest, last, inside the archive too. */
    json = pack_manifest_json(p, &jlen);
    if (json == NULL) {
        sbx_err_oom(&p->j.err);
        goto out;
    }
    archive_entry_clear(e);
    archive_entry_copy_pathname(e, PACK_MANIFEST_NAME);
    archive_entry_set_mode(e, AE_IFREG | 0644);
    archive_entry_set_size(e, (la_int64_t)jlen);
    archive_entry_set_mtime(e, 0, 0);
    if (archive_write_header(ar, e) < ARCHIVE_WARN || archive_write_data(ar, json, jlen) < 0 ||
        archive_write_close(ar) != ARCHIVE_OK) {
        if (!agent_outjob_cancelled(&p->j)) {
            agent_archive_err(&p->j.err, ar, "write the archive");
        }
        goto out;
    }
    if (pack_progress(p, "archive", bytes, p->nfiles, true) < 0) {
        goto out;
    }
    rc = 0;
out:
    free(json);
    if (e != NULL) {
        archive_entry_free(e);
    }
    if (ar != NULL) {
        agent_outjob_archive_free(&p->j, ar, rc < 0);
    }
    return rc;
}

static int pack_produce(struct agent_outjob *j)
{
    struct pack *p = agent_container_of(j, struct pack, j);
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    char rel[AGENT_FS_PATH_BUF] = "";
    struct stat st;
    bool failed;

    uv_mutex_lock(&j->mu);
    while (!p->go && !j->abort) {
        uv_cond_wait(&j->cv, &j->mu);
    }
    failed = p->build_failed;
    uv_mutex_unlock(&j->mu);
    if (agent_outjob_cancelled(j)) {
        return sbx_err_set(&j->err, SBX_E_CANCELLED, "cancelled");
    }
    if (failed) {
        sbx_err_set(&j->err, SBX_E_CANCELLED, "%s", p->build_msg);
        snprintf(j->err.stage, sizeof(j->err.stage), "build");
        return -1;
    }
    /* This thread is the job's: it reads as the identity from here to its end. */
    if (agent_ident_enter_err(&p->who, &sc, &j->err) < 0) {
        return -1;
    }
    p->rootfd = agent_path_opendir(p->root, false, &j->err);
    if (p->rootfd < 0) {
        return -1;
    }
    if (pack_progress(p, "scan", 0, 0, true) < 0 || pack_scan(p, p->rootfd, rel, 0, 0) < 0) {
        return -1;
    }
    if (p->has_entrypoint && fstatat(p->rootfd, p->entrypoint, &st, 0) < 0) {
        sbx_err_sys(&j->err, errno, NULL, "entrypoint \"%s\"", p->entrypoint);
        snprintf(j->err.field, sizeof(j->err.field), "entrypoint");
        sbx_err_set_path(&j->err, p->entrypoint);
        return -1;
    }
    if (p->nfiles > 1) {
        qsort(p->files, p->nfiles, sizeof(*p->files), file_cmp);
    }
    if (pack_progress(p, "scan", p->total_size, p->nfiles, true) < 0) {
        return -1;
    }
    return pack_archive(p);
}

/* --- loop side ---------------------------------------------------------------------------- */

static void pack_part_send(struct pack *p, const struct pack_part *pt, bool last)
{
    msgpack_packer *pk = pack_notify(p, "pack.manifest", 4 + (last ? 7 : 0));

    if (pk == NULL) {
        return;
    }
    sbx_pack_kv_u64(pk, "part", pt->part);
    sbx_pack_kv_bool(pk, "last", last);
    sbx_pack_cstr(pk, "files");
    msgpack_pack_array(pk, pt->n);
    for (size_t i = 0; i < pt->n; i++) {
        const struct pack_file *f = &pt->files[i];
        msgpack_pack_map(pk, 4 + (S_ISREG(f->mode) || f->target != NULL));
        sbx_pack_cstr(pk, "path");
        sbx_pack_bstr(pk, f->path, strlen(f->path));
        sbx_pack_kv_str(pk, "type", file_type(f->mode));
        sbx_pack_kv_u64(pk, "size", f->size);
        sbx_pack_kv_u64(pk, "mode", f->mode & 07777);
        if (S_ISREG(f->mode)) {
            sbx_pack_kv_str(pk, "sha256", f->sha);
        } else if (f->target != NULL) {
            sbx_pack_cstr(pk, "target");
            sbx_pack_bstr(pk, f->target, strlen(f->target));
        }
    }
    if (last) {
        uint8_t d[32];
        char hex[65];
        struct sha256_ctx sha = p->j.sha;

        sha256_digest(&sha, sizeof(d), d);
        sbx_hex(d, sizeof(d), hex);
        sbx_pack_cstr(pk, "entrypoint");
        if (p->has_entrypoint) {
            sbx_pack_bstr(pk, p->entrypoint, strlen(p->entrypoint));
        } else {
            msgpack_pack_nil(pk);
        }
        sbx_pack_cstr(pk, "args");
        msgpack_pack_array(pk, p->nargs);
        for (size_t i = 0; i < p->nargs; i++) {
            sbx_pack_bstr(pk, p->args[i], strlen(p->args[i]));
        }
        sbx_pack_kv_str(pk, "format", format_name(p->format));
        sbx_pack_kv_u64(pk, "file_count", p->nfiles);
        sbx_pack_kv_u64(pk, "total_size", p->total_size);
        sbx_pack_kv_u64(pk, "archive_size", p->j.bytes);
        sbx_pack_kv_str(pk, "archive_sha256", hex);
    }
    agent_conn_send(p->job.conn);
}

static void pack_on_event(struct agent_outjob *j, void *arg)
{
    struct pack *p = agent_container_of(j, struct pack, j);
    struct pack_ev *ev = arg;

    if (j->s != NULL) {
        if (ev->kind == PACK_EV_PROGRESS) {
            pack_send_progress(p, ev->phase, ev->bytes, ev->files, NULL);
        } else {
            pack_part_send(p, &ev->part, false);
        }
    }
    free(ev);
}

static void pack_on_free(struct agent_outjob *j, void *arg)
{
    free(arg);
}

static void pack_on_finish(struct agent_outjob *j)
{
    struct pack *p = agent_container_of(j, struct pack, j);
    struct pack_part last = { p->files + p->sent_upto, p->nfiles - p->sent_upto, p->parts };

    pack_part_send(p, &last, true);
    pack_send_progress(p, "done", p->total_size, p->nfiles, NULL);
}

static void pack_on_close(struct agent_outjob *j)
{
    struct pack *p = agent_container_of(j, struct pack, j);

    if (p->build != NULL) { /* cancelled during the build: kill it, end its streams */
        struct sbx_err err;
        sbx_err_set(&err, SBX_E_CANCELLED, "pack job cancelled");
        /* Streams the client was never told about (the job failed before its response) are
         * freed unsent: a frame about them would break §9.1 rule 3. */
        build_abandon(p, p->announced ? &err : NULL);
    }
    agent_conn_ref_del(&p->job);
    agent_ignore_free(&p->ig);
    for (size_t i = 0; i < p->nfiles; i++) {
        free(p->files[i].path);
        free(p->files[i].target);
    }
    free(p->files);
    agent_strv_free(p->args);
    if (p->rootfd >= 0) {
        close(p->rootfd);
    }
    free(p);
}

/* --- the request --------------------------------------------------------------------------- */

/* The ignore_files param into p->ignore_files: names in the pack root, read by pack_prepare. */
static int pack_ignore_names(struct pack *p, const msgpack_object *params, struct sbx_err *err)
{
    size_t n = 0;

    if (agent_strv_param(params, "ignore_files", SBX_PACK_IGNORE_FILES_MAX, SBX_ARG_MAX, 0,
                         &p->ignore_files, &n, err) < 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = p->ignore_files[i];
        if (strchr(name, '/') != NULL || strcmp(name, "..") == 0) {
            return sbx_err_param(err, "ignore_files", "ignore_files are names in the pack root");
        }
    }
    return 0;
}

/* Add the lines of the ignore file @f (@path, for errors) to the rules: at most
 * PACK_IGNORE_FILE_MAX bytes (EFBIG beyond). 0, or -1 with @err. */
static int ignore_read(struct pack *p, FILE *f, const char *path, struct sbx_err *err)
{
    char line[4096];
    size_t total = 0;

    while (fgets(line, sizeof(line), f) != NULL) {
        size_t n = strlen(line);
        total += n;
        if (total > PACK_IGNORE_FILE_MAX) {
            agent_fs_err(err, EFBIG, "read ignore file", path);
            (void)snprintf(err->msg, sizeof(err->msg), "ignore file \"%s\": larger than %u bytes",
                           path, PACK_IGNORE_FILE_MAX);
            return -1;
        }
        if (agent_ignore_add(&p->ig, line, n) == -1) { /* -2: skipped */
            return sbx_err_oom(err);
        }
    }
    if (ferror(f)) {
        return agent_fs_err(err, EIO, "read ignore file", path);
    }
    return 0;
}

/* Read the ignore files of the pack root: regular files only (one that is anything else is
 * EINVAL, and is never opened, so a FIFO cannot hold the loop), missing ones skipped. */
static int pack_ignore_files(struct pack *p, struct sbx_err *err)
{
    static char *const def[] = { ".sbxignore", NULL };

    for (char *const *name = p->ignore_files != NULL ? p->ignore_files : def; *name != NULL;
         name++) {
        char path[AGENT_FS_PATH_BUF * 2];
        struct stat st;
        FILE *f;
        int fd, rc;
        snprintf(path, sizeof(path), "%s/%s", p->root, *name);
        fd = agent_path_open_file_at(AT_FDCWD, path, false, &st);
        if (fd < 0 && errno == ENOENT) {
            continue; /* missing files are skipped */
        }
        if (fd < 0) {
            return agent_fs_err_file(err, errno, st.st_mode, "read ignore file", path);
        }
        if ((uint64_t)st.st_size > PACK_IGNORE_FILE_MAX) {
            (void)close(fd); /* read-only, nothing read */
            agent_fs_err(err, EFBIG, "read ignore file", path);
            (void)snprintf(err->msg, sizeof(err->msg), "ignore file \"%s\": larger than %u bytes",
                           path, PACK_IGNORE_FILE_MAX);
            return -1;
        }
        f = fdopen(fd, "r");
        if (f == NULL) {
            (void)close(fd);
            return sbx_err_oom(err);
        }
        rc = ignore_read(p, f, path, err);
        (void)fclose(f); /* read-only */
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* Free a job that was parsed but never started. */
static void pack_discard(struct pack *p)
{
    agent_strv_free(p->ignore_files);
    agent_strv_free(p->args);
    agent_ignore_free(&p->ig);
    free(p);
}

/*
 * Every param of a pack.create request, the build map's too (into @q when there is one): nothing
 * is looked at on disk yet, so a bad param wins over a cap or a missing root (PROTOCOL.md §7.2).
 */
static struct pack *pack_parse(struct agent_conn *c, const msgpack_object *params,
                               const msgpack_object **build, struct build_req *q,
                               struct sbx_err *err)
{
    struct pack *p = calloc(1, sizeof(*p));
    char **excl = NULL;
    size_t nexcl = 0;
    char fmt[16];
    int r;

    if (p == NULL) {
        sbx_err_oom(err);
        return NULL;
    }
    p->rootfd = -1;
    p->j.a = c->a;
    if (agent_fs_path_param(params, "path", SBX_REQUIRED, p->root, err) < 0 ||
        sbx_param_cstr(params, "format", SBX_REQUIRED, fmt, sizeof(fmt), err) < 0 ||
        sbx_param_map(params, "build", SBX_OPTIONAL, 64, build, err) < 0 ||
        agent_strv_param(params, "args", SBX_ARGV_MAX, SBX_ARG_MAX, 0, &p->args, &p->nargs, err) <
            0 ||
        agent_strv_param(params, "exclude", SBX_PACK_EXCLUDE_MAX, SBX_ARG_MAX, 0, &excl, &nexcl,
                         err) < 0) {
        goto fail;
    }
    if (strcmp(fmt, "tar.gz") == 0) {
        p->format = PACK_TGZ;
    } else if (strcmp(fmt, "tar.zst") == 0) {
        p->format = PACK_TZST;
    } else {
        sbx_err_param(err, "format", "format must be \"tar.gz\" or \"tar.zst\"");
        goto fail;
    }
    r = sbx_param_bstr(params, "entrypoint", SBX_OPTIONAL, p->entrypoint, sizeof(p->entrypoint),
                       err);
    if (r < 0) {
        goto fail;
    }
    p->has_entrypoint = r == 0;
    if (p->has_entrypoint && (p->entrypoint[0] == '/' || p->entrypoint[0] == '\0')) {
        sbx_err_param(err, "entrypoint", "entrypoint must be a path relative to the pack root");
        goto fail;
    }
    /* Rules in order: .git first (so "!.git" can take it back), then exclude, then the files. */
    if (agent_ignore_add(&p->ig, ".git", 4) < 0) {
        sbx_err_oom(err);
        goto fail;
    }
    for (size_t i = 0; i < nexcl; i++) {
        r = agent_ignore_add(&p->ig, excl[i], strlen(excl[i]));
        if (r == -2) {
            sbx_err_param(err, "exclude", "exclude[%zu] has more than %d '*'", i,
                          AGENT_IGNORE_STARS_MAX);
            (void)snprintf(err->field, sizeof(err->field), "exclude[%zu]", i);
            goto fail;
        }
        if (r < 0) {
            sbx_err_oom(err);
            goto fail;
        }
    }
    if (pack_ignore_names(p, params, err) < 0 ||
        agent_ident_param(c->a, params, &p->who, err) < 0 ||
        (*build != NULL && build_params(c->a, p->root, *build, q, err) < 0)) {
        goto fail;
    }
    /* The build's user: build.user, else the request's (or the default) as read above. */
    if (*build != NULL && !q->has_user) {
        r = agent_user_param(c->a, params, true, &q->user, err);
        if (r < 0) {
            goto fail;
        }
        q->has_user = r == 1;
    }
    agent_strv_free(excl);
    return p;
fail:
    agent_strv_free(excl);
    pack_discard(p);
    return NULL;
}

/* The pack root must be a directory; its ignore files are read now (they may not exist). */
static int pack_prepare(struct pack *p, struct sbx_err *err)
{
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    int rc;

    if (agent_ident_enter_err(&p->who, &sc, err) < 0 ||
        agent_path_check_dir(p->root, "pack", err) < 0) {
        return -1;
    }
    rc = pack_ignore_files(p, err);
    agent_strv_free(p->ignore_files);
    p->ignore_files = NULL;
    return rc;
}

/* The caps a new job counts against: max_packs, and max_streams for its archive and build. */
static int pack_caps(struct agent_conn *c, bool build, struct sbx_err *err)
{
    if (pack_count(c) >= SBX_MAX_PACKS) {
        return sbx_err_limit(err, "max_packs", SBX_MAX_PACKS,
                             "too many pack jobs on this connection (cap %u)", SBX_MAX_PACKS);
    }
    return agent_stream_reserve(c, build ? 3 : 1, err);
}

/*
 * Start the archive thread of @p (registered with @c as p->job; its build, if any, running) and
 * answer the pack.create request p->req. AGENT_REPLIED; or -1 with @err, the job freed (and its
 * build killed).
 */
static int pack_launch(struct pack *p, struct agent_conn *c, struct sbx_err *err)
{
    msgpack_packer *pk;

    p->j.produce = pack_produce;
    p->j.on_event = pack_on_event;
    p->j.on_finish = pack_on_finish;
    p->j.on_free = pack_on_free;
    p->j.on_close = pack_on_close;
    switch (agent_outjob_start(&p->j, c, err)) {
    case 0:
        break;
    case -2: /* on_close freed the job (and killed the build) */
        return -1;
    default:
        agent_conn_ref_del(&p->job);
        build_abandon(p, NULL);
        pack_discard(p);
        return -1;
    }
    {
        struct sbx_pack_result res = {
            .id = p->id,
            .build_out = p->build != NULL ? p->build_out_sid : 0,
            .build_err = p->build != NULL ? p->build_err_sid : 0,
            .archive = p->j.sid,
        };
        pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, p->req);
        sbx_pack_result_pack(pk, &res);
    }
    agent_conn_send(c);
    p->announced = true;
    if (p->build != NULL) {
        agent_pipe_update(&p->build->out);
        agent_pipe_update(&p->build->err);
    }
    return AGENT_REPLIED;
}

/* The build started (or could not): give it its streams and launch the job, answering the
 * request either way; a job whose connection went meanwhile is dropped with its build. */
static void build_started(struct agent_proc *b, const struct sbx_err *e, void *data)
{
    struct pack *p = data;
    struct agent_conn *c = p->job.conn;
    struct sbx_err err;
    uint32_t req;

    p->start = NULL;
    sbx_err_clear(&err);
    if (c != NULL) {
        c->nstreams -= PACK_BUILD_STREAMS; /* the hold ends; the streams below take its place */
    }
    if (b == NULL) {
        err = *e;
        sbx_err_prefix(&err, "build");
    } else if (c == NULL || c->closing) {
        sbx_err_set(&err, SBX_E_CANCELLED, "connection closed");
    } else if (agent_stream_new(c, AGENT_STREAM_OUT, &b->out, &err) != NULL &&
               agent_stream_new(c, AGENT_STREAM_OUT, &b->err, &err) != NULL) {
        b->on_done = build_done;
        b->data = p;
        p->build = b;
        p->build_out_sid = b->out.stream->id;
        p->build_err_sid = b->err.stream->id;
        req = p->req;
        if (pack_launch(p, c, &err) < 0) {
            agent_conn_reply_error(c, req, &err); /* the job is gone */
        }
        return;
    }
    p->build = b;
    build_abandon(p, NULL); /* kills and forgets it; no stream was announced */
    if (c != NULL && !c->closing) {
        agent_conn_reply_error(c, p->req, &err);
    }
    agent_conn_ref_del(&p->job);
    pack_discard(p);
}

int agent_pack_create(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    const msgpack_object *build = NULL;
    struct build_req q;
    struct pack *p;

    q.argv = NULL;
    /* Params, then caps, then the file system (PROTOCOL.md §7.2). */
    p = pack_parse(c, m->params, &build, &q, err);
    if (p == NULL) {
        return -1;
    }
    if (pack_caps(c, build != NULL, err) < 0 || pack_prepare(p, err) < 0) {
        agent_strv_free(q.argv);
        pack_discard(p);
        return -1;
    }
    p->id = ++c->next_pack;
    p->req = m->id;
    p->go = build == NULL;
    if (build == NULL) {
        agent_conn_ref_add(c, &p->job, pack_conn_gone);
        return pack_launch(p, c, err);
    }
    if (build_start(p, c, &q, err) < 0) {
        pack_discard(p);
        return -1;
    }
    /* Counted in max_packs, its streams held, while the build starts. */
    agent_conn_ref_add(c, &p->job, pack_conn_gone);
    c->nstreams += PACK_BUILD_STREAMS;
    return AGENT_LATER; /* answered by build_started */
}
