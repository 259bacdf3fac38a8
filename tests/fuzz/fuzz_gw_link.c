/*
 * libFuzzer target for what a hostile agent answers the gateway's OWN link to a sandbox
 * (gateway/link.c), the connection besides the SDK sessions (gw_agent covers those): the pid ->
 * port lookup of the ingress and exposeHttp (gsock.c's gw_pid_port_find: proc.list, net.listening,
 * then /proc/PID/stat through fs.open, fs.read and fs.close along the parent links) and a deploy
 * job's agent side (deploy.c: proc.spawn of the install command, pack.create with the build
 * command, their output split into BuildLog lines, pack.progress, pack.manifest and the archive
 * stream). The workload inside the VM can replace the agent, so none of these bytes can be
 * trusted.
 *
 * link.c, gsock.c and deploy.c are compiled in. fuzz_gw_uv.h replaces the link's socket calls;
 * the link's connect is completed by the target, and its bytes go through libsbx's sans-I/O core
 * as the gateway's do. deploy.c makes its revision directory and writes the archive under
 * /dev/shm inside fuzz_sandbox.h's read-only namespace (removed after each input); the JSON files
 * it saves (revision.json, manifest.json) are checked here instead of written.
 *
 * Input: byte 0 bits 0-6: the size of each read of agent bytes (0: as many as the link takes);
 * bit 7: the target does not answer the link's hello (the input does: request 1). Then
 * operations, each a byte b (b % 8) and its arguments:
 *
 *   0 k       a lookup of agent process id k (k >= 0xf0: 2^32 - 256 + k), at most FZ_LOOKUPS
 *   1 hi lo   the next (hi << 8 | lo) bytes are agent bytes on the sandbox's link, fed in reads of
 *             the current size; a link whose connect is pending connects first and gets the
 *             canned hello. libsbx numbers a link's requests 1 (hello), 2, 3, ... in the order
 *             they are made; stream ids are the agent's
 *   2 n       the read size becomes n (0: whole)
 *   3 k       lookup k (mod the lookups made) is cancelled if it still waits
 *   4         the agent ends the link (EOF)
 *   5         a pending connect fails, or else the link is closed (gw_link_close)
 *   6 f       a deploy (the first only): f bit 0 gives an installCommand, bit 1 a buildCommand
 *   7         the loop runs
 *
 * At the end of the input the link is closed.
 *
 * Checks: no crash, leak (memory or descriptor) or undefined behaviour (ASan, UBSan); every frame
 * the link writes decodes. Lookups: gw_pid_port_find that returns NULL never calls back, and one
 * that returns a handle calls back exactly once (never after its cancel; all by the link's end); a
 * port found is one net.listening listed for TCP, held by the process proc.list showed for the id
 * (not "exited") or by a pid whose /proc/PID/stat parent links, as the agent answered them, lead to
 * it, and no lower such port: not one of the process itself, nor (when no walk can have reached
 * PP_DEPTH_MAX and at most PP_CAND_MAX pids held lower ports) one of a pid those answers show to
 * descend from it; not-found has a reason, and is not the answer while the link is up and the
 * process itself was listed as listening; with the link still up at the end, every
 * /proc/PID/stat handle the agent gave is closed unless a read of it waits for its answer (a
 * cancelled lookup's too). Deploy: the request is answered 200 and the job has
 * failed with a reason by the link's end; the BuildLog lines of each output buffer are the bytes
 * the agent sent on its streams in order (lines split at '\n' with one '\r' before it dropped,
 * longer lines cut at LOG_LINE_MAX, nothing added or lost), valid UTF-8 lines logged as they
 * came, the lines logged are those the gateway took in the order it took them (all, or all up to
 * the cap with the truncation notice once after them), out_lines and out_bytes (the bytes the
 * lines take as JSON in revision.json) are right and within LOG_LINES_MAX and LOG_BYTES_MAX;
 * the build's exit status or signal logged are within 0-255 and 1-64; manifest.json is written
 * at most once, after the archive, which holds exactly the bytes of the archive stream, with at
 * most MANIFEST_FILES entries, sizes and counts that are unsigned and modes within 0o7777, as
 * PROTOCOL.md 19.5 gives them; the "packaged" line tells the archive's size.
 * FZ_GW_TRACE=1 in the environment logs the gateway's lines, the link's events and the outcomes
 * (to check seeds by hand).
 */
#define gw_log fz_gw_log
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The stand-ins first, then the gateway files they stand in for. */
/* clang-format off */
#include "fuzz_gw_uv.h"
#include "fuzz_sandbox.h"
#include "backend.h"
#include "http.h"
#include "m_fs.h"
#include "sbx/conn.h"
#include "sbx/frame.h"
#include "sbx/msg.h"
#include "sbx/schema.h"
/* clang-format on */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: say which, then abort. */
__attribute__((noreturn)) static void fz_fail(const char *what)
{
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

static bool fz_trace;

void fz_gw_log(const char *fmt, ...)
{
    va_list ap;

    if (!fz_trace) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "sbx-gateway: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* What the files call that the target steps in front of: the observers are defined below. */
static void fz_saw_event(const struct sbx_event *ev);
static void fz_saw_line(const char *p, size_t n, json_t *m);
static void fz_saw_file(const char *path, const char *data, size_t len);

/* Every event the link takes from the core, seen before the link dispatches it. */
static int fz_conn_next(struct sbx_conn *c, struct sbx_event *ev, struct sbx_err *err)
{
    int r = sbx_conn_next(c, ev, err);

    if (r == 1) {
        fz_saw_event(ev);
    }
    return r;
}

/* deploy.c's BuildLog messages (and manifest strings) as decoded. */
static json_t *fz_json_lossy(const char *p, size_t n)
{
    json_t *m = gw_fs_json_lossy(p, n);

    if (m != NULL) {
        fz_saw_line(p, n, m);
    }
    return m;
}

/* deploy.c's revision.json and manifest.json: checked, not written. */
static int fz_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    (void)mode;
    fz_saw_file(path, data, len);
    return 0;
}

/* The link's connect: completed (or failed) by the target. */
static uv_connect_t *fz_connect_req;
static unsigned fz_link_gen; /* links made so far */

static void fz_pipe_connect(uv_connect_t *req, uv_pipe_t *handle, const char *name,
                            uv_connect_cb cb)
{
    (void)handle;
    (void)name;
    (void)cb;
    fz_connect_req = req;
    fz_link_gen++;
}

static int fz_status; /* the deploy request's answer */

static void fz_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                                 json_t *body)
{
    (void)hc;
    (void)headers;
    if (!fz_answer_ok(status, body)) {
        fz_fail("an error answer without its code and message");
    }
    fz_status = status;
    json_decref(body);
}

#define uv_pipe_connect      fz_pipe_connect
#define sbx_conn_next        fz_conn_next
#define gw_fs_json_lossy     fz_json_lossy
#define gw_file_write_atomic fz_file_write_atomic
#define gw_http_respond_json fz_http_respond_json

#include "../../gateway/deploy.c"
#include "../../gateway/gsock.c"
#include "../../gateway/link.c"

/* --- the gateway ---------------------------------------------------------------------------- */

#define FZ_DATA "/dev/shm/fz-gw-link" /* the gateway's data dir while a deploy runs */

static uv_loop_t fz_loop;
static struct gw fz_gw;
static struct gw_sandbox *fz_sb;
static char *fz_hello;
static size_t fz_hello_len;
static bool fz_own_hello; /* byte 0 bit 7: the input answers hello */
static size_t fz_step;

/* The agent's answer to hello (request 1): a frame the caller frees. */
static char *fz_hello_make(size_t *len)
{
    static const char *const caps[] = { "session",    "env",      "process",  "fs",
                                        "fs.futimes", "fs.lock",  "pack",     "net",
                                        "pty",        "transfer", "fs.umask", NULL };
    struct sbx_hello_result r = { 0 };
    struct sbx_out o;
    struct sbx_err err;
    char *frame;

    r.version = 1;
    r.agent = "sbx-agent";
    r.agent_version = "0.1.0";
    r.caps = caps;
    r.limits.frame_max = SBX_FRAME_MAX;
    r.limits.chunk_max = SBX_STREAM_CHUNK_MAX;
    r.limits.stream_window = 1u << 20;
    r.limits.max_streams = 4096;
    r.limits.max_procs = 1024;
    r.limits.max_conns = 64;
    r.conn = 3;
    r.recv_window = GW_AGENT_RECV_WINDOW; /* echoed, as the agent does */
    sbx_out_init(&o);
    sbx_out_begin(&o);
    sbx_pack_response_head(&o.pk, 1);
    sbx_hello_result_pack(&o.pk, &r);
    if (sbx_out_end(&o, &err) < 0) {
        abort();
    }
    frame = sbx_out_steal(&o, len);
    sbx_out_destroy(&o);
    return frame;
}

/* --- what the link writes: every frame decodes; fs.open's paths by request id ---------------- */

#define FZ_OPENS_MAX 1024

static struct sbx_framer fz_framer;
static struct sbx_decoder fz_dec;
static struct {
    uint32_t id, pid;
} fz_opens[FZ_OPENS_MAX];
static size_t fz_nopens;

/* The file handles the agent gave for those opens, on the current link: each is closed by the
 * gateway (fs.close) unless a read of it is still unanswered, whether or not its lookup was
 * cancelled meanwhile (fz_check_handles). Reads by request id, for their answers. */
#define FZ_FH_MAX 256
static struct {
    uint32_t fh;
    unsigned opened, closed, reads_out;
} fz_fh[FZ_FH_MAX];
static size_t fz_nfh;
static struct {
    uint32_t id, fh;
} fz_reads[FZ_OPENS_MAX];
static size_t fz_nreads;

/* A new connection: its frames, request ids and handles start over. */
static void fz_wire_reset(void)
{
    sbx_framer_free(&fz_framer);
    sbx_framer_init(&fz_framer, SBX_FRAME_MAX);
    fz_nopens = 0;
    fz_nfh = 0;
    fz_nreads = 0;
}

/* The record of handle @fh (made at first sight), or NULL when the table is full. */
static __typeof__(fz_fh[0]) *fz_fh_of(uint32_t fh)
{
    for (size_t i = 0; i < fz_nfh; i++) {
        if (fz_fh[i].fh == fh) {
            return &fz_fh[i];
        }
    }
    if (fz_nfh == FZ_FH_MAX) {
        return NULL;
    }
    memset(&fz_fh[fz_nfh], 0, sizeof(fz_fh[0]));
    fz_fh[fz_nfh].fh = fh;
    return &fz_fh[fz_nfh++];
}

/* A request's u32 parameter. */
static bool fz_param_u32(const struct sbx_msg *m, const char *key, uint32_t *out)
{
    const msgpack_object *v = sbx_obj_get(m->params, key);

    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)v->via.u64;
    return true;
}

/* A str or bin member (sbx_obj_bytes takes no NULL). */
static bool fz_obj_bytes(const msgpack_object *o, const char **p, size_t *n)
{
    return o != NULL && sbx_obj_bytes(o, p, n);
}

/* "/proc/N/stat" -> N. */
static bool fz_stat_path(const char *p, size_t n, uint32_t *pid)
{
    unsigned long long v = 0;
    size_t i = 6;

    if (n < 12 || memcmp(p, "/proc/", 6) != 0 || memcmp(p + n - 5, "/stat", 5) != 0) {
        return false;
    }
    for (; i < n - 5; i++) {
        if (p[i] < '0' || p[i] > '9' || (v = v * 10 + (unsigned)(p[i] - '0')) > UINT32_MAX) {
            return false;
        }
    }
    *pid = (uint32_t)v;
    return i > 6;
}

static void fz_wire_out(const char *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    struct sbx_err err;

    while (len > 0) {
        size_t used = 0;
        const uint8_t *frame = NULL;
        uint32_t flen = 0;
        int r = sbx_framer_next(&fz_framer, p, len, &used, &frame, &flen, &err);
        struct sbx_msg m;
        const char *path;
        size_t plen;
        uint32_t pid;

        if (r < 0) {
            fz_fail("the link wrote a broken frame");
        }
        p += used;
        len -= used;
        if (r == 0) {
            if (used == 0) {
                break;
            }
            continue;
        }
        if (sbx_msg_decode(&fz_dec, frame, flen, &m, &err) < 0) {
            fz_fail("the link wrote a message the agent cannot read");
        }
        if (m.kind == SBX_MSG_REQUEST && m.method_len == 7 && memcmp(m.method, "fs.open", 7) == 0 &&
            fz_obj_bytes(sbx_obj_get(m.params, "path"), &path, &plen) &&
            fz_stat_path(path, plen, &pid) && fz_nopens < FZ_OPENS_MAX) {
            fz_opens[fz_nopens].id = m.id;
            fz_opens[fz_nopens].pid = pid;
            fz_nopens++;
        }
        if (m.kind == SBX_MSG_REQUEST && m.method_len == 7 && memcmp(m.method, "fs.read", 7) == 0 &&
            fz_nreads < FZ_OPENS_MAX) {
            uint32_t fh;
            __typeof__(fz_fh[0]) *h;

            if (fz_param_u32(&m, "fh", &fh) && (h = fz_fh_of(fh)) != NULL) {
                h->reads_out++;
                fz_reads[fz_nreads].id = m.id;
                fz_reads[fz_nreads].fh = fh;
                fz_nreads++;
            }
        }
        if (m.kind == SBX_MSG_REQUEST && m.method_len == 8 &&
            memcmp(m.method, "fs.close", 8) == 0) {
            uint32_t fh;
            __typeof__(fz_fh[0]) *h;

            if (fz_param_u32(&m, "fh", &fh) && (h = fz_fh_of(fh)) != NULL) {
                h->closed++;
            }
        }
    }
}

/* The gateway's side of a response about a handle (seen before the link dispatches it). */
static void fz_handle_saw(const struct sbx_event *ev)
{
    const msgpack_object *v;
    __typeof__(fz_fh[0]) *h;

    if (ev->call == SBX_CALL_FS_OPEN && ev->error == NULL) {
        for (size_t i = 0; i < fz_nopens; i++) {
            if (fz_opens[i].id == ev->id && (v = sbx_obj_get(ev->result, "fh")) != NULL &&
                v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= UINT32_MAX &&
                (h = fz_fh_of((uint32_t)v->via.u64)) != NULL) {
                h->opened++;
                break;
            }
        }
    }
    if (ev->call == SBX_CALL_FS_READ) {
        for (size_t i = 0; i < fz_nreads; i++) {
            if (fz_reads[i].id == ev->id) {
                if ((h = fz_fh_of(fz_reads[i].fh)) != NULL && h->reads_out > 0) {
                    h->reads_out--;
                }
                fz_reads[i] = fz_reads[--fz_nreads];
                break;
            }
        }
    }
}

/* With the link still up, every handle given is closed or has a read in flight (the agent keeps
 * a connection's handles until it ends; the link is shared by every lookup of the sandbox). */
static void fz_check_handles(void)
{
    for (size_t i = 0; i < fz_nfh; i++) {
        if (fz_fh[i].opened > fz_fh[i].closed + fz_fh[i].reads_out) {
            fz_fail("a /proc/PID/stat handle was left open on a live link");
        }
    }
}

/* --- lookups: what the agent told each, and its answer ---------------------------------------- */

#define FZ_LOOKUPS   16
#define FZ_EDGES_MAX 512

enum fz_lstate { FZ_L_LIVE = 1, FZ_L_CANCELLED, FZ_L_ANSWERED, FZ_L_REFUSED };

struct fz_sock {
    uint32_t pid, port;
};

struct fz_edge {
    uint32_t pid, ppid;
    bool mixed; /* another read of pid gave another parent */
};

struct fz_lookup {
    struct gw_pid_port *q;
    uint32_t pid;
    unsigned gen; /* the link it joined */
    enum fz_lstate state;
    unsigned calls;
    /* proc.list: the first entry with this id */
    bool found, has_ospid, exited;
    uint32_t ospid;
    /* net.listening: TCP entries with a pid and a port */
    bool listening;
    struct fz_sock *socks;
    size_t nsocks, capsocks;
    /* /proc/PID/stat: the parent links read */
    unsigned opens;
    bool open_known;
    uint32_t open_pid;
    struct fz_edge edges[FZ_EDGES_MAX];
    unsigned nedges;
};

static struct fz_lookup fz_lk[FZ_LOOKUPS];
static unsigned fz_nlk;

static struct fz_lookup *fz_lookup_of(const void *user)
{
    for (unsigned i = 0; i < fz_nlk; i++) {
        if (fz_lk[i].state == FZ_L_LIVE && user == (const void *)&fz_lk[i].q->req) {
            return &fz_lk[i];
        }
    }
    return NULL;
}

/* The parent pid in a /proc/PID/stat text, "pid (comm) S ppid ...": comm may hold anything, the
 * last ')' ends it. The gateway reads 511 bytes of it; the kernel writes no NUL. */
static bool fz_stat_ppid(const char *p, size_t n, uint32_t *ppid)
{
    char buf[512];
    const char *rp;
    char *end;
    unsigned long v;

    n = n < sizeof(buf) - 1 ? n : sizeof(buf) - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    if ((rp = strrchr(buf, ')')) == NULL) {
        return false;
    }
    for (rp++; isspace((unsigned char)*rp); rp++) {
    }
    if (*rp++ == '\0') {
        return false; /* no state */
    }
    errno = 0;
    v = strtoul(rp, &end, 10);
    if (end == rp || errno != 0 || v > UINT32_MAX) {
        return false;
    }
    *ppid = (uint32_t)v;
    return true;
}

static void fz_lookup_saw(struct fz_lookup *lk, const struct sbx_event *ev)
{
    const msgpack_object *a;
    const char *p;
    size_t n;
    uint32_t ppid;

    if (ev->call == SBX_CALL_FS_OPEN) {
        lk->open_known = false;
    }
    if (ev->error != NULL) {
        return;
    }
    switch (ev->call) {
    case SBX_CALL_PROC_LIST:
        a = sbx_obj_get(ev->result, "procs");
        for (uint32_t i = 0; a != NULL && a->type == MSGPACK_OBJECT_ARRAY && i < a->via.array.size;
             i++) {
            const msgpack_object *e = &a->via.array.ptr[i];
            const msgpack_object *id = sbx_obj_get(e, "id"), *pid = sbx_obj_get(e, "pid");
            const msgpack_object *st = sbx_obj_get(e, "state");

            if (id == NULL || id->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                id->via.u64 != lk->pid) {
                continue;
            }
            lk->found = true;
            lk->has_ospid = pid != NULL && pid->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                            pid->via.u64 <= UINT32_MAX;
            lk->ospid = lk->has_ospid ? (uint32_t)pid->via.u64 : 0;
            lk->exited = fz_obj_bytes(st, &p, &n) && n == 6 && memcmp(p, "exited", 6) == 0;
            break;
        }
        return;
    case SBX_CALL_NET_LISTENING:
        lk->listening = true;
        a = sbx_obj_get(ev->result, "sockets");
        for (uint32_t i = 0; a != NULL && a->type == MSGPACK_OBJECT_ARRAY && i < a->via.array.size;
             i++) {
            struct sbx_listening li;
            struct sbx_err err;

            /* PROTOCOL.md 20.2's entries; "tcp" and "tcp6" are the TCP tables. */
            if (sbx_listening_read(&a->via.array.ptr[i], &li, &err) < 0 || li.proto_len < 3 ||
                memcmp(li.proto, "tcp", 3) != 0 || !li.has_pid || li.port == 0) {
                continue;
            }
            if (lk->nsocks == lk->capsocks) {
                size_t cap = lk->capsocks ? lk->capsocks * 2 : 16;
                struct fz_sock *s = realloc(lk->socks, cap * sizeof(*s));
                if (s == NULL) {
                    abort();
                }
                lk->socks = s;
                lk->capsocks = cap;
            }
            lk->socks[lk->nsocks].pid = li.pid;
            lk->socks[lk->nsocks].port = li.port;
            lk->nsocks++;
        }
        return;
    case SBX_CALL_FS_OPEN:
        lk->opens++;
        for (size_t i = 0; i < fz_nopens; i++) {
            if (fz_opens[i].id == ev->id) {
                lk->open_known = true;
                lk->open_pid = fz_opens[i].pid;
            }
        }
        return;
    case SBX_CALL_FS_READ:
        /* A parent of 0 is none (pid 1, kernel threads): nothing descends from "pid 0". */
        if (lk->open_known && fz_obj_bytes(sbx_obj_get(ev->result, "data"), &p, &n) &&
            fz_stat_ppid(p, n, &ppid) && ppid != 0 && lk->nedges < FZ_EDGES_MAX) {
            struct fz_edge *ne = &lk->edges[lk->nedges++];

            ne->pid = lk->open_pid;
            ne->ppid = ppid;
            ne->mixed = false;
            for (unsigned e = 0; e + 1 < lk->nedges; e++) {
                if (lk->edges[e].pid == ne->pid &&
                    (lk->edges[e].mixed || lk->edges[e].ppid != ne->ppid)) {
                    lk->edges[e].mixed = ne->mixed = true;
                }
            }
        }
        return;
    default:
        return;
    }
}

/* Whether the parent links read show @x descending from the process within @max links;
 * @consistent: only through pids whose every read gave one parent. */
static bool fz_descends(const struct fz_lookup *lk, uint32_t x, bool consistent, unsigned max)
{
    uint32_t seen[FZ_EDGES_MAX + 1], level[FZ_EDGES_MAX + 1], next[FZ_EDGES_MAX + 1];
    size_t nseen = 0, nlevel = 0, nnext;

    if (x == lk->ospid) {
        return true;
    }
    seen[nseen++] = x;
    level[nlevel++] = x;
    for (unsigned d = 0; d < max && nlevel > 0; d++) {
        nnext = 0;
        for (size_t i = 0; i < nlevel; i++) {
            for (unsigned e = 0; e < lk->nedges; e++) {
                bool known = false;
                if (lk->edges[e].pid != level[i] || (consistent && lk->edges[e].mixed)) {
                    continue;
                }
                if (lk->edges[e].ppid == lk->ospid) {
                    return true;
                }
                for (size_t s = 0; s < nseen; s++) {
                    known = known || seen[s] == lk->edges[e].ppid;
                }
                if (!known && nseen <= FZ_EDGES_MAX) {
                    seen[nseen++] = lk->edges[e].ppid;
                    next[nnext++] = lk->edges[e].ppid;
                }
            }
        }
        memcpy(level, next, nnext * sizeof(*next));
        nlevel = nnext;
    }
    return false;
}

static bool fz_link_alive(unsigned gen)
{
    return gen == fz_link_gen && fz_sb->link != NULL && fz_sb->link->up && !fz_sb->link->ended;
}

/* A found port: one the process or a descendant listens on, and the lowest the answers show. */
static void fz_check_port(const struct fz_lookup *lk, uint32_t port)
{
    uint32_t own = 65536;
    unsigned ncand = 0;
    bool held = false;

    if (!lk->found || !lk->has_ospid || lk->exited) {
        fz_fail("a port for a process proc.list did not show running");
    }
    if (!lk->listening) {
        fz_fail("a port before net.listening answered");
    }
    for (size_t i = 0; i < lk->nsocks; i++) {
        const struct fz_sock *s = &lk->socks[i];
        if (s->pid == lk->ospid && s->port < own) {
            own = s->port;
        }
        if (s->port == port && !held) {
            held = fz_descends(lk, s->pid, false, 2 * PP_DEPTH_MAX);
        }
    }
    if (!held) {
        fz_fail("the port found is not held by the process or a descendant of it");
    }
    if (own < port) {
        fz_fail("the process itself listens on a lower port than the one found");
    }
    /* Holders of ports below the process's own: the lookup looks at the PP_CAND_MAX lowest. */
    for (size_t i = 0; i < lk->nsocks; i++) {
        bool again = false;
        if (lk->socks[i].pid == lk->ospid || lk->socks[i].pid <= 1 || lk->socks[i].port >= own) {
            continue;
        }
        for (size_t k = 0; k < i; k++) {
            again = again || (lk->socks[k].pid == lk->socks[i].pid && lk->socks[k].port < own);
        }
        ncand += !again;
    }
    if (lk->opens >= PP_DEPTH_MAX || ncand > PP_CAND_MAX) {
        return;
    }
    for (size_t i = 0; i < lk->nsocks; i++) {
        const struct fz_sock *s = &lk->socks[i];
        if (s->port < port && s->pid > 1 && fz_descends(lk, s->pid, true, PP_DEPTH_MAX)) {
            fz_fail("a descendant of the process listens on a lower port than the one found");
        }
    }
}

static void fz_found(void *user, uint16_t port, const char *why)
{
    struct fz_lookup *lk = user;

    lk->calls++;
    if (fz_trace) {
        fprintf(stderr, "fuzz: lookup of %u: port %u%s%s\n", lk->pid, port, why ? ": " : "",
                why ? why : "");
    }
    if (lk->state != FZ_L_LIVE) {
        fz_fail(lk->state == FZ_L_CANCELLED ? "a lookup called back after its cancel"
                                            : "a lookup called back twice");
    }
    lk->state = FZ_L_ANSWERED;
    if (port != 0) {
        fz_check_port(lk, port);
        return;
    }
    if (why == NULL || why[0] == '\0') {
        fz_fail("a lookup found nothing and says not why");
    }
    if (fz_link_alive(lk->gen) && lk->found && lk->has_ospid && !lk->exited && lk->listening) {
        for (size_t i = 0; i < lk->nsocks; i++) {
            if (lk->socks[i].pid == lk->ospid) {
                fz_fail("no port found for a process listed as listening, the link up");
            }
        }
    }
}

static void fz_lookup_start(uint8_t k)
{
    struct fz_lookup *lk;
    char why[256] = "";

    if (fz_nlk >= FZ_LOOKUPS) {
        return;
    }
    lk = &fz_lk[fz_nlk++];
    memset(lk, 0, sizeof(*lk));
    lk->pid = k < 0xf0 ? k : UINT32_MAX - 0xffu + k;
    lk->state = FZ_L_LIVE;
    lk->q = gw_pid_port_find(fz_sb, lk->pid, fz_found, lk, why, sizeof(why));
    lk->gen = fz_link_gen;
    if (lk->q == NULL) {
        if (lk->calls > 0) {
            fz_fail("a lookup that could not start called back");
        }
        if (why[0] == '\0') {
            fz_fail("a lookup could not start and says not why");
        }
        lk->state = FZ_L_REFUSED;
    } else if (lk->calls > 0) {
        fz_fail("a lookup answered inside gw_pid_port_find returned a handle");
    }
}

static void fz_lookup_cancel(uint8_t k)
{
    struct fz_lookup *lk;

    if (fz_nlk == 0) {
        return;
    }
    lk = &fz_lk[k % fz_nlk];
    if (lk->state == FZ_L_LIVE) {
        lk->state = FZ_L_CANCELLED;
        gw_pid_port_cancel(lk->q);
    }
}

/* --- the deploy: its output streams and the lines logged ----------------------------------------
 */

struct fz_bytes {
    char *p;
    size_t len, cap;
};

struct fz_line {
    int which; /* 0: lb_out, 1: lb_err */
    char *p;
    size_t len;
    json_t *m; /* the message made of it (a reference of ours) */
};

static bool fz_deploying;
static struct fz_bytes fz_out[2]; /* what reached each output buffer */
static struct fz_line *fz_lines;  /* the lines taken from them, in order */
static size_t fz_nlines, fz_caplines;
static uint64_t fz_arch_bytes; /* archive stream bytes delivered */
static unsigned fz_manifests;

static void fz_bytes_add(struct fz_bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *q;
        while (cap < b->len + n) {
            cap *= 2;
        }
        if ((q = realloc(b->p, cap)) == NULL) {
            abort();
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static struct job *fz_job(void)
{
    struct gw_deploy *d = fz_gw.deploy;

    return d != NULL && d->revs != NULL ? d->revs->job : NULL;
}

static void fz_saw_event(const struct sbx_event *ev)
{
    struct job *j = fz_job();

    if (fz_trace) {
        fprintf(stderr, "fuzz: event %d %s id %u stream %u%s%s\n", (int)ev->kind,
                ev->method ? ev->method : "-", ev->id, ev->stream, ev->error ? " error " : "",
                ev->error ? ev->error->code : "");
    }
    if (ev->kind == SBX_EV_RESPONSE && !ev->unknown) {
        fz_handle_saw(ev);
    }
    if (ev->kind == SBX_EV_RESPONSE && !ev->unknown && ev->user != NULL) {
        struct fz_lookup *lk = fz_lookup_of(ev->user);
        if (lk != NULL) {
            fz_lookup_saw(lk, ev);
        }
    }
    if (ev->kind != SBX_EV_DATA || j == NULL || j->r == NULL || ev->stream_user == NULL) {
        return;
    }
    if (ev->stream_user == &j->st_out) {
        fz_bytes_add(&fz_out[0], ev->data, ev->len);
    } else if (ev->stream_user == &j->st_err) {
        fz_bytes_add(&fz_out[1], ev->data, ev->len);
    } else if (ev->stream_user == &j->st_arch) {
        fz_arch_bytes += ev->len;
    }
}

static void fz_saw_line(const char *p, size_t n, json_t *m)
{
    struct job *j = fz_job();
    int which;

    if (j == NULL) {
        return;
    }
    if (p >= j->lb_out.buf && p < j->lb_out.buf + sizeof(j->lb_out.buf)) {
        which = 0;
    } else if (p >= j->lb_err.buf && p < j->lb_err.buf + sizeof(j->lb_err.buf)) {
        which = 1;
    } else {
        return;
    }
    if (fz_nlines == fz_caplines) {
        size_t cap = fz_caplines ? fz_caplines * 2 : 64;
        struct fz_line *l = realloc(fz_lines, cap * sizeof(*l));
        if (l == NULL) {
            abort();
        }
        fz_lines = l;
        fz_caplines = cap;
    }
    fz_lines[fz_nlines].which = which;
    fz_lines[fz_nlines].p = malloc(n + 1);
    if (fz_lines[fz_nlines].p == NULL) {
        abort();
    }
    memcpy(fz_lines[fz_nlines].p, p, n);
    fz_lines[fz_nlines].len = n;
    fz_lines[fz_nlines].m = json_incref(m); /* so that its address is not reused meanwhile */
    fz_nlines++;
}

/* A JSON integer in [0, max], or (optional) absent or null. */
static bool fz_uint(json_t *v, bool optional, json_int_t max)
{
    if (v == NULL || json_is_null(v)) {
        return optional;
    }
    return json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= max;
}

/* manifest.json (docs/GATEWAY.md: the pack.manifest parts joined, PROTOCOL.md 19.5's fields). */
static void fz_check_manifest(const char *path, const char *data, size_t len)
{
    json_t *o = json_loadb(data, len, JSON_ALLOW_NUL, NULL), *files = json_object_get(o, "files"),
           *f;
    char arch[4400];
    struct stat st;
    size_t i;

    if (++fz_manifests > 1) {
        fz_fail("manifest.json written twice");
    }
    if (!json_is_object(o) || !json_is_array(files) || json_array_size(files) > MANIFEST_FILES) {
        fz_fail("manifest.json is no object with at most MANIFEST_FILES files");
    }
    json_array_foreach(files, i, f)
    {
        if (!fz_uint(json_object_get(f, "size"), false, INT64_MAX) ||
            !fz_uint(json_object_get(f, "mode"), false, 07777)) {
            fz_fail("a manifest entry's size or mode is out of its range");
        }
    }
    if (!fz_uint(json_object_get(o, "file_count"), true, INT64_MAX) ||
        !fz_uint(json_object_get(o, "total_size"), true, INT64_MAX) ||
        !fz_uint(json_object_get(o, "archive_size"), true, INT64_MAX)) {
        fz_fail("a manifest count or size is out of its range");
    }
    json_decref(o);
    /* The archive was kept before its manifest, and holds what the stream carried. */
    (void)snprintf(arch, sizeof(arch), "%.*sarchive.tar.gz",
                   (int)(strlen(path) - strlen("manifest.json")), path);
    if (stat(arch, &st) != 0 || (uint64_t)st.st_size != fz_arch_bytes) {
        fz_fail("the archive kept is not the archive stream's bytes");
    }
}

static void fz_saw_file(const char *path, const char *data, size_t len)
{
    size_t n = strlen(path);

    if (n >= 14 && strcmp(path + n - 14, "/manifest.json") == 0) {
        fz_check_manifest(path, data, len);
    }
}

/* The lines taken from buffer @which are its bytes in order: each line then '\n' (one '\r'
 * before it dropped), or cut at LOG_LINE_MAX, or flushed (the stream ended, the build phase
 * ended, the job failed); nothing left unless the log was truncated. */
static void fz_check_stream(int which, bool truncated)
{
    const struct fz_bytes *s = &fz_out[which];
    size_t pos = 0;

    for (size_t i = 0; i < fz_nlines; i++) {
        const struct fz_line *l = &fz_lines[i];
        if (l->which != which) {
            continue;
        }
        if (l->len > LOG_LINE_MAX || memchr(l->p, '\n', l->len) != NULL) {
            fz_fail("a log line longer than LOG_LINE_MAX or holding a newline");
        }
        if (l->len > s->len - pos || memcmp(s->p + pos, l->p, l->len) != 0) {
            fz_fail("a log line is not what the output said next");
        }
        pos += l->len;
        if (pos < s->len && s->p[pos] == '\n') {
            pos++;
        } else if (pos + 1 < s->len && s->p[pos] == '\r' && s->p[pos + 1] == '\n') {
            pos += 2;
        }
    }
    if (!truncated && pos != s->len) {
        fz_fail("output bytes the log lost");
    }
}

static bool fz_utf8(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = p[i], need;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= need) {
            return false;
        }
        for (unsigned k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10ffff))) {
            return false;
        }
        i += need + 1;
    }
    return true;
}

static void fz_check_deploy(void)
{
    struct rev *r = fz_gw.deploy != NULL ? fz_gw.deploy->revs : NULL;
    size_t k = 0, i, out_bytes = 0, cuts = 0;
    json_t *e;

    if (fz_trace && r != NULL) {
        fprintf(stderr, "fuzz: revision %s: %s, %zu lines of output (%zu taken), error: %s\n",
                r->id, rstatus_names[r->status], r->out_lines, fz_nlines, r->error);
    }
    if (fz_status != 200 || r == NULL) {
        fz_fail("the deploy request was not taken");
    }
    if (r->job != NULL || r->status != R_FAILED || r->error[0] == '\0') {
        fz_fail("the deploy job outlived its link, or failed without a reason");
    }
    if (r->out_lines > LOG_LINES_MAX || r->out_bytes > LOG_BYTES_MAX) {
        fz_fail("the output in the log is over its caps");
    }
    json_array_foreach(r->logs, i, e)
    {
        json_t *m = json_object_get(e, "message");
        const char *level = json_string_value(json_object_get(e, "level"));
        const char *step = json_string_value(json_object_get(e, "step"));
        const char *text = json_string_value(m);
        int v = -1;

        if (!json_is_string(m) || level == NULL || step == NULL ||
            !json_is_string(json_object_get(e, "timestamp")) ||
            (strcmp(level, "info") != 0 && strcmp(level, "error") != 0)) {
            fz_fail("a BuildLog without message, level, step or timestamp");
        }
        if (k < fz_nlines && m == fz_lines[k].m) {
            const struct fz_line *l = &fz_lines[k++];
            char *dump = json_dumps(m, JSON_ENCODE_ANY);

            if (cuts > 0) {
                fz_fail("output logged after the truncation notice");
            }
            if (fz_utf8((const unsigned char *)l->p, l->len) &&
                (json_string_length(m) != l->len || memcmp(text, l->p, l->len) != 0)) {
                fz_fail("a line of valid UTF-8 was not logged as it came");
            }
            if (dump == NULL) {
                abort();
            }
            out_bytes += strlen(dump) - 2;
            free(dump);
            continue;
        }
        if (strncmp(text, "(output truncated", 17) == 0) {
            cuts++;
        }
        if (sscanf(text, "build command finished: exit status %d", &v) == 1 && (v < 0 || v > 255)) {
            fz_fail("the build's exit status logged is not within 0-255");
        }
        if (sscanf(text, "build command finished: signal %d", &v) == 1 && (v < 1 || v > 64)) {
            fz_fail("the build's signal logged is not within 1-64");
        }
        if (strncmp(text, "packaged ", 9) == 0) {
            long long files = -1;
            unsigned long long bytes = 0;
            if (sscanf(text, "packaged %lld files into a %llu-byte archive", &files, &bytes) != 2 ||
                files < 0 || bytes != fz_arch_bytes) {
                fz_fail("the packaged line tells another count or size than the archive's");
            }
        }
    }
    if (k != r->out_lines || out_bytes != r->out_bytes) {
        fz_fail("out_lines or out_bytes are not what the logged output takes");
    }
    if (r->out_truncated ? !(k + 1 == fz_nlines && cuts == 1) : !(k == fz_nlines && cuts == 0)) {
        fz_fail("output lines not logged without the truncation notice, or logged past it");
    }
    fz_check_stream(0, r->out_truncated);
    fz_check_stream(1, r->out_truncated);
}

static void fz_deploy_start(uint8_t f)
{
    char why[256];
    char body[256];
    struct gw_http_req req;

    if (fz_deploying) {
        return;
    }
    fz_deploying = true;
    if (mkdir(FZ_DATA, 0700) < 0 || gw_deploy_start(&fz_gw, why, sizeof(why)) < 0) {
        fprintf(stderr, "fuzz: %s: %s\n", FZ_DATA, strerror(errno));
        abort();
    }
    (void)snprintf(body, sizeof(body),
                   "{\"app\":\"fz\",\"entrypoint\":\"main.ts\",\"args\":[\"--port\",\"8000\"],"
                   "\"mode\":\"local\"%s%s}",
                   (f & 1) != 0 ? ",\"installCommand\":\"npm ci\"" : "",
                   (f & 2) != 0 ? ",\"buildCommand\":\"deno task build\"" : "");
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.path = "/api/v2/sandboxes/x/deploy";
    req.query = "";
    req.body = body;
    req.body_len = strlen(body);
    fz_status = 0;
    gw_rest_deploy(&fz_gw, (struct gw_http_conn *)&fz_status, &req, fz_sb);
}

static void fz_deploy_end(void)
{
    const char *what = "";

    if (!fz_deploying) {
        return;
    }
    fz_check_deploy();
    gw_deploy_stop(&fz_gw);
    fz_uv_settle(&fz_loop, 2);
    if (fuzz_scratch_remove(AT_FDCWD, FZ_DATA, &what) < 0) {
        fprintf(stderr, "fuzz: %s %s: %s\n", what, FZ_DATA, strerror(errno));
        abort();
    }
    for (size_t i = 0; i < fz_nlines; i++) {
        free(fz_lines[i].p);
        json_decref(fz_lines[i].m);
    }
    free(fz_lines);
    free(fz_out[0].p);
    free(fz_out[1].p);
    fz_lines = NULL;
    fz_nlines = fz_caplines = 0;
    memset(fz_out, 0, sizeof(fz_out));
    fz_arch_bytes = 0;
    fz_manifests = 0;
    fz_deploying = false;
}

/* --- driving the link ---------------------------------------------------------------------------
 */

static void fz_init(void)
{
    static uv_pipe_t warm;

    /* libuv opens the loop's spare descriptor (/dev/null, for EMFILE) at its first stream: now,
     * not inside an input's descriptor count. */
    if (uv_loop_init(&fz_loop) != 0 || uv_pipe_init(&fz_loop, &warm, 0) != 0) {
        abort();
    }
    uv_close((uv_handle_t *)&warm, NULL);
    (void)uv_run(&fz_loop, UV_RUN_NOWAIT);
    fz_trace = getenv("FZ_GW_TRACE") != NULL;
    fz_gw.loop = &fz_loop;
    fz_gw.opt.quiet = true;
    fz_gw.opt.data_dir = FZ_DATA;
    fz_gw.opt.cwd = "/home/app";
    fz_gw.next_stream = 1ull << 40;
    fz_sb = calloc(1, sizeof(*fz_sb));
    if (fz_sb == NULL) {
        abort();
    }
    fz_sb->g = &fz_gw;
    snprintf(fz_sb->id, sizeof(fz_sb->id), "sbx_ord_00000000000000000000");
    snprintf(fz_sb->addr, sizeof(fz_sb->addr), "unix:/nonexistent/sbx-fuzz.sock");
    fz_sb->state = GW_SB_READY;
    fz_sb->labels = json_object();
    fz_gw.sandboxes = fz_sb;
    fz_gw.nsandboxes = 1;
    fz_hello = fz_hello_make(&fz_hello_len);
    fz_uv_sink = fz_wire_out;
}

/* The pending connect of the sandbox's link completes (@ok) or fails. */
static bool fz_connect(bool ok)
{
    struct gw_link *l = fz_sb->link;

    if (l == NULL || fz_connect_req != &l->connect) {
        return false;
    }
    fz_connect_req = NULL;
    fz_wire_reset();
    on_connect(&l->connect, ok ? 0 : UV_ECONNREFUSED);
    return true;
}

/* Agent bytes into the sandbox's link, in reads of at most @step (0: as many as it takes). */
static void fz_agent_says(const uint8_t *p, size_t n, size_t step)
{
    int stalls = 0;

    while (n > 0) {
        struct gw_link *l = fz_sb->link;
        uv_buf_t buf;
        size_t k;

        if (l == NULL || l->ended || fz_connect_req == &l->connect) {
            return;
        }
        on_alloc((uv_handle_t *)&l->pipe, n, &buf);
        k = n < buf.len ? n : buf.len;
        if (step > 0 && k > step) {
            k = step;
        }
        if (k == 0) {
            if (++stalls > 2) {
                return;
            }
            on_read((uv_stream_t *)&l->pipe, UV_ENOBUFS, &buf);
            continue;
        }
        stalls = 0;
        memcpy(buf.base, p, k);
        on_read((uv_stream_t *)&l->pipe, (ssize_t)k, &buf);
        p += k;
        n -= k;
    }
}

/* A link made since the last operation connects and hears the canned hello. */
static void fz_link_up(void)
{
    if (fz_connect(true) && !fz_own_hello) {
        fz_agent_says((const uint8_t *)fz_hello, fz_hello_len, 0);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_sandbox_enter(*argc, *argv);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    int fds;

    fuzz_sandbox_enter(0, NULL);
    if (fz_sb == NULL) {
        fz_init();
    }
    if (size == 0 || size > (1u << 20)) {
        return 0;
    }
    fds = fuzz_count_fds();
    /* What one input allocates it frees (libFuzzer's leak check runs on any imbalance). */
    if (sbx_decoder_init(&fz_dec) < 0) {
        abort();
    }
    sbx_framer_init(&fz_framer, SBX_FRAME_MAX);
    fz_nlk = 0;
    fz_step = p[0] & 0x7f;
    fz_own_hello = (p[0] & 0x80) != 0;
    p++;
    while (p < end) {
        uint8_t op = *p++ % 8;
        size_t n;

        switch (op) {
        case 0:
            if (p < end) {
                fz_lookup_start(*p++);
            }
            break;
        case 1:
            n = fz_take_len16(&p, end);
            fz_link_up();
            fz_agent_says(p, n, fz_step);
            p += n;
            break;
        case 2:
            if (p < end) {
                fz_step = *p++;
            }
            break;
        case 3:
            if (p < end) {
                fz_lookup_cancel(*p++);
            }
            break;
        case 4:
            if (fz_sb->link != NULL && fz_connect_req != &fz_sb->link->connect) {
                uv_buf_t buf = uv_buf_init(NULL, 0);
                on_read((uv_stream_t *)&fz_sb->link->pipe, UV_EOF, &buf);
            }
            break;
        case 5:
            if (!fz_connect(false)) {
                gw_link_close(fz_sb, "the sandbox stopped");
            }
            break;
        case 6:
            if (p < end) {
                fz_deploy_start(*p++);
            }
            break;
        default:
            break;
        }
        fz_uv_settle(&fz_loop, 1);
    }
    fz_uv_settle(&fz_loop, 2);
    if (fz_link_alive(fz_link_gen)) {
        fz_check_handles();
    }
    gw_link_close(fz_sb, "the input ended");
    fz_uv_settle(&fz_loop, 3);
    if (fz_sb->link != NULL) {
        fz_fail("a link outlived gw_link_close");
    }
    for (unsigned i = 0; i < fz_nlk; i++) {
        if (fz_lk[i].state == FZ_L_LIVE) {
            fz_fail("a lookup was never answered, its link gone");
        }
        free(fz_lk[i].socks);
    }
    fz_deploy_end();
    sbx_framer_free(&fz_framer);
    sbx_decoder_destroy(&fz_dec);
    if (fds >= 0 && fuzz_count_fds() != fds) {
        fz_fail("a descriptor outlived the input (the archive, the link's pipe)");
    }
    return 0;
}
