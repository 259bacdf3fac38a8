/*
 * Guest sockets (gsock.h): one net.connect per socket on the sandbox's link (link.h), each
 * socket its own link user. The two streams of the connect carry the bytes; credit does the
 * flow control both ways:
 *
 *   to the guest    gw_gsock_write queues into the core (sbx_conn_write) while its queue on the
 *                   `in` stream is under GS_CORE_MAX, the rest (and everything written before
 *                   the connect is answered) in the socket's own queue, which is moved into the
 *                   core as the agent grants credit and the link's output drains.
 *   from the guest  each chunk is acknowledged (sbx_conn_consumed) after ops->data returns, or,
 *                   while paused, when the socket is resumed.
 *
 * Lifetime: a socket is freed once it is finished for its user (closed delivered, or
 * gw_gsock_close), no net.connect of it is in flight (the request's `user` points into it) and
 * no callback of it runs. A connect answered after the user let go is cancelled at once.
 *
 * And gw_pid_port_find: proc.list for the process's guest pid, net.listening, then the parent
 * links of the other holders of listening TCP sockets from /proc/PID/stat (fs.open, fs.read,
 * fs.close), on the link too.
 */
#include "gsock.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "sbx/msg.h"
#include "sbx/schema.h"

/* Bytes kept queued in the core on the `in` stream (its own cap is SBX_CONN_QUEUE_MAX). */
#define GS_CORE_MAX (2u << 20)
/* The socket's own queue: a user that ignores gw_gsock_write's 1 is refused beyond this. */
#define GS_PEND_MAX                   (16u << 20)

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

struct gw_gsock {
    struct gw_link_user u;
    struct gw_link_req req;
    struct gw_link_stream sin, sout;
    struct gw_link *l; /* NULL once the link is down */
    struct gw_sandbox *sb;
    const struct gw_gsock_ops *ops;
    void *user;
    char host[64];
    uint16_t port;
    uint32_t in, out;  /* the connect's streams (valid once open) */
    bool open;         /* net.connect answered with the streams */
    bool req_out;      /* net.connect in flight */
    bool gone;         /* closed delivered or gw_gsock_close: no more callbacks */
    bool opening;      /* inside gw_gsock_open (a failure there is returned, not called) */
    bool failed_early; /* the connect could not be sent from inside gw_gsock_open */
    bool in_done;      /* `in` ended by us or cancelled by the agent */
    bool in_cancelled; /* ... cancelled: nothing more reaches the guest */
    bool shut_want;    /* gw_gsock_shutdown: end `in` once the own queue is empty */
    bool out_done;     /* `out` ended */
    bool paused;       /* guest bytes are not acknowledged */
    bool blocked;      /* gw_gsock_write returned 1: call writable at GW_GSOCK_LOW */
    size_t unacked;    /* guest bytes held while paused */
    uint8_t *pend;     /* the own queue: pend[poff .. plen) */
    size_t poff, plen, pcap;
    int depth; /* callbacks of ours on the stack */
    char why[256];
};

static void gs_maybe_free(struct gw_gsock *s)
{
    if (s->gone && !s->req_out && s->depth == 0) {
        free(s->pend);
        free(s);
    }
}

static struct sbx_conn *gs_conn(struct gw_gsock *s)
{
    return s->l != NULL ? gw_link_conn(s->l) : NULL;
}

/* The errno name of an agent error ("ECONNREFUSED"), or NULL when it is no errno error. */
static const char *gs_errno_name(const struct sbx_err *e)
{
    if (e == NULL) {
        return NULL;
    }
    if (e->sys_errno != 0 && sbx_errno_name(e->sys_errno) != NULL) {
        return sbx_errno_name(e->sys_errno);
    }
    if (e->code[0] == 'E' && sbx_errno_from_name(e->code) > 0) {
        return sbx_errno_name(sbx_errno_from_name(e->code));
    }
    return NULL;
}

/* Let go of the link: streams cancelled (@cancel) or only forgotten (both ended cleanly: what
 * is still queued on `in` goes out), out of the user list. */
static void gs_teardown(struct gw_gsock *s, bool cancel)
{
    struct sbx_conn *c = gs_conn(s);
    struct sbx_err err;

    if (c != NULL && s->open) {
        (void)sbx_conn_stream_set_user(c, s->in, NULL);
        (void)sbx_conn_stream_set_user(c, s->out, NULL);
        if (cancel || s->in_cancelled) {
            (void)sbx_conn_cancel(c, s->in, &err);
        }
        if (cancel || !s->out_done) {
            (void)sbx_conn_cancel(c, s->out, &err);
        }
    }
    if (s->l != NULL) {
        struct gw_link *l = s->l;

        gw_link_leave(l, &s->u);
        if (!s->req_out) {
            s->l = NULL;
        }
        gw_link_flush(l);
    }
}

/* Finished for the user: closed(@err, @errno_name) once, then freed when nothing holds it. */
static void gs_finish(struct gw_gsock *s, const char *err, const char *errno_name)
{
    if (s->gone) {
        return;
    }
    s->gone = true;
    gs_teardown(s, err != NULL);
    s->depth++;
    s->ops->closed(s->user, err, errno_name);
    s->depth--;
}

static void gs_finish_sbx(struct gw_gsock *s, const char *what, const struct sbx_err *e)
{
    char msg[sizeof(s->why)];
    const char *name = gs_errno_name(e);

    snprintf(msg, sizeof(msg), "%s%s%s: %s", name != NULL ? name : e->code, what[0] ? ": " : "",
             what, e->msg);
    gs_finish(s, msg, name);
}

static size_t gs_queued(struct gw_gsock *s)
{
    struct sbx_conn *c = gs_conn(s);
    size_t n = s->plen - s->poff;

    if (c != NULL && s->open && !s->in_done) {
        n += sbx_conn_queued(c, s->in);
    }
    return n;
}

static int gs_pend_add(struct gw_gsock *s, const void *data, size_t len)
{
    if (len == 0) {
        return 0;
    }
    if (s->poff > 0 && s->poff == s->plen) {
        s->poff = s->plen = 0;
    }
    if (s->plen - s->poff + len > GS_PEND_MAX) {
        return -1;
    }
    if (s->plen + len > s->pcap) {
        size_t live = s->plen - s->poff;
        size_t cap = s->pcap ? s->pcap : 64u << 10;
        uint8_t *p;

        while (cap < live + len) {
            cap *= 2;
        }
        if (cap != s->pcap) {
            p = malloc(cap);
            if (p == NULL) {
                return -1;
            }
            if (live > 0) { /* s->pend is NULL before the first write */
                memcpy(p, s->pend + s->poff, live);
            }
            free(s->pend);
            s->pend = p;
            s->pcap = cap;
        } else if (live > 0) {
            memmove(s->pend, s->pend + s->poff, live);
        }
        s->poff = 0;
        s->plen = live;
    }
    memcpy(s->pend + s->plen, data, len);
    s->plen += len;
    return 0;
}

/*
 * Move the own queue into the core while its queue is under GS_CORE_MAX; end `in` when asked
 * and nothing is left. Returns -1 when the stream refused (cancelled meanwhile: the own queue is
 * dropped).
 */
static int gs_pump(struct gw_gsock *s)
{
    struct sbx_conn *c = gs_conn(s);
    struct sbx_err err;

    if (c == NULL || !s->open || s->in_done) {
        return 0;
    }
    while (s->poff < s->plen) {
        size_t q = sbx_conn_queued(c, s->in);
        size_t n = s->plen - s->poff;

        if (q >= GS_CORE_MAX) {
            return 0;
        }
        if (n > GS_CORE_MAX - q) {
            n = GS_CORE_MAX - q;
        }
        if (sbx_conn_write(c, s->in, s->pend + s->poff, n, &err) < 0) {
            if (strcmp(err.code, SBX_E_LIMIT) == 0) {
                return 0; /* all queues together are full: later */
            }
            s->poff = s->plen = 0;
            return -1;
        }
        s->poff += n;
    }
    s->poff = s->plen = 0;
    if (s->shut_want) {
        s->shut_want = false;
        s->in_done = true;
        (void)sbx_conn_end(c, s->in, NULL, &err);
    }
    return 0;
}

/* After credit or drained output: more to the core, and `writable` once low again. */
static void gs_progress(struct gw_gsock *s)
{
    (void)gs_pump(s);
    if (!s->gone && s->in_done && !s->shut_want && s->out_done) {
        /* A shutdown that waited for queued bytes completed after the guest's end: both
         * directions are done (every caller holds depth, so closed may free nothing here). */
        gs_finish(s, NULL, NULL);
        return;
    }
    if (!s->gone && s->blocked && gs_queued(s) <= GW_GSOCK_LOW) {
        s->blocked = false;
        if (s->ops->writable != NULL) {
            s->ops->writable(s->user);
        }
    }
}

/* --- link callbacks ------------------------------------------------------------------------- */

static void gs_on_connect(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_gsock *s = container_of(r, struct gw_gsock, req);
    struct sbx_conn *c;
    struct sbx_err err;

    s->req_out = false;
    s->depth++;
    c = gs_conn(s);
    if (s->gone) {
        /* The user let go while the connect was in flight. */
        if (ev->error == NULL && ev->rec == SBX_REC_NET && c != NULL) {
            (void)sbx_conn_cancel(c, ev->r.net.in, &err);
            (void)sbx_conn_cancel(c, ev->r.net.out, &err);
        }
        s->l = NULL;
    } else if (ev->error != NULL) {
        if (strcmp(ev->error->code, SBX_E_EOF) != 0) {
            char what[96];

            snprintf(what, sizeof(what), "connecting to %s port %u in the sandbox", s->host,
                     s->port);
            gs_finish_sbx(s, what, ev->error);
        } /* else the link is ending: `down` follows with its reason */
    } else if (ev->rec != SBX_REC_NET || c == NULL) {
        gs_finish(s, "net.connect: the agent's answer has no streams", NULL);
    } else {
        s->in = ev->r.net.in;
        s->out = ev->r.net.out;
        s->open = true;
        (void)sbx_conn_stream_set_user(c, s->in, &s->sin);
        (void)sbx_conn_stream_set_user(c, s->out, &s->sout);
        if (s->ops->connected != NULL) {
            s->ops->connected(s->user);
        }
        if (!s->gone) {
            gs_progress(s);
        }
    }
    s->depth--;
    gs_maybe_free(s);
}

static void gs_send_connect(struct gw_gsock *s, struct sbx_conn *c)
{
    struct sbx_net_connect_params p = { 0 };
    struct sbx_err err;

    p.host = s->host;
    p.host_len = strlen(s->host);
    p.port = s->port;
    s->req.fn = gs_on_connect;
    if (sbx_net_connect(c, &p, &s->req, NULL, &err) < 0) {
        snprintf(s->why, sizeof(s->why), "net.connect: %s: %s", err.code, err.msg);
        if (s->opening) {
            s->failed_early = true;
        } else {
            gs_finish(s, s->why, gs_errno_name(&err));
        }
        return;
    }
    s->req_out = true;
}

static void gs_up(struct gw_link_user *u, struct sbx_conn *c)
{
    struct gw_gsock *s = container_of(u, struct gw_gsock, u);

    s->depth++;
    if (!s->gone && !s->req_out && !s->open) {
        gs_send_connect(s, c);
    }
    s->depth--;
    gs_maybe_free(s);
}

static void gs_down(struct gw_link_user *u, const char *why)
{
    struct gw_gsock *s = container_of(u, struct gw_gsock, u);
    char msg[sizeof(s->why)];

    s->depth++;
    s->l = NULL; /* already out of the link's list; the link may be freed after this */
    if (s->sb->state != GW_SB_READY) {
        snprintf(msg, sizeof(msg), "the sandbox stopped");
    } else {
        snprintf(msg, sizeof(msg), "%s", why);
    }
    gs_finish(s, msg, NULL);
    s->depth--;
    gs_maybe_free(s);
}

static void gs_drained(struct gw_link_user *u)
{
    struct gw_gsock *s = container_of(u, struct gw_gsock, u);

    s->depth++;
    if (!s->gone) {
        gs_progress(s);
    }
    s->depth--;
    gs_maybe_free(s);
}

static void gs_on_in(struct gw_link_stream *st, const struct sbx_event *ev)
{
    struct gw_gsock *s = container_of(st, struct gw_gsock, sin);

    s->depth++;
    if (s->gone) {
        /* nothing */
    } else if (ev->kind == SBX_EV_CREDIT) {
        gs_progress(s);
    } else if (ev->kind == SBX_EV_CANCEL) {
        if (ev->local && ev->error != NULL && strcmp(ev->error->code, SBX_E_EOF) == 0) {
            /* the link is ending: `down` follows */
        } else {
            /* A write error (EPIPE, ECONNRESET): nothing more reaches the guest. */
            s->in_done = true;
            s->in_cancelled = true;
            s->shut_want = false;
            s->poff = s->plen = 0;
            if (ev->error != NULL) {
                snprintf(s->why, sizeof(s->why), "%s", ev->error->code);
            }
            if (s->out_done) {
                if (ev->error != NULL) {
                    gs_finish_sbx(s, "writing to the guest socket", ev->error);
                } else {
                    gs_finish(s, NULL, NULL);
                }
            }
        }
    }
    s->depth--;
    gs_maybe_free(s);
}

static void gs_on_out(struct gw_link_stream *st, const struct sbx_event *ev)
{
    struct gw_gsock *s = container_of(st, struct gw_gsock, sout);
    struct sbx_conn *c = gs_conn(s);
    struct sbx_err err;

    s->depth++;
    if (s->gone) {
        if (ev->kind == SBX_EV_DATA && c != NULL) {
            (void)sbx_conn_consumed(c, ev->stream, ev->len, &err);
        }
    } else if (ev->kind == SBX_EV_DATA) {
        if (s->ops->data != NULL) {
            s->ops->data(s->user, ev->data, ev->len);
        }
        c = gs_conn(s);
        if (!s->gone && s->paused) {
            s->unacked += ev->len;
        } else if (c != NULL) {
            (void)sbx_conn_consumed(c, ev->stream, ev->len, &err);
        }
    } else if (ev->kind == SBX_EV_END) {
        s->out_done = true;
        if (ev->error != NULL) {
            gs_finish_sbx(s, "the guest socket", ev->error);
        } else {
            if (s->ops->eof != NULL) {
                s->ops->eof(s->user);
            }
            if (!s->gone && s->in_done && !s->shut_want) {
                gs_finish(s, NULL, NULL);
            }
        }
    } else if (ev->kind == SBX_EV_CANCEL) {
        if (ev->local && ev->error != NULL && strcmp(ev->error->code, SBX_E_EOF) == 0) {
            /* the link is ending: `down` follows */
        } else if (ev->error != NULL) {
            s->out_done = true;
            gs_finish_sbx(s, "the guest socket", ev->error);
        } else {
            s->out_done = true;
            gs_finish(s, "the agent cancelled the guest socket", NULL);
        }
    }
    s->depth--;
    gs_maybe_free(s);
}

/* --- API ------------------------------------------------------------------------------------ */

struct gw_gsock *gw_gsock_open(struct gw_sandbox *sb, const char *host, uint16_t port,
                               const struct gw_gsock_ops *ops, void *user, char *why, size_t whylen)
{
    struct gw_gsock *s;
    struct gw_link *l;

    if (host == NULL) {
        host = "127.0.0.1";
    }
    if (port == 0 || ops == NULL || ops->closed == NULL) {
        snprintf(why, whylen, "bad guest socket parameters");
        return NULL;
    }
    if (strlen(host) >= sizeof(((struct gw_gsock *)0)->host)) {
        snprintf(why, whylen, "the guest host is too long");
        return NULL;
    }
    l = gw_link_get(sb, why, whylen);
    if (l == NULL) {
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    s->l = l;
    s->sb = sb;
    s->ops = ops;
    s->user = user;
    s->port = port;
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->u.up = gs_up;
    s->u.down = gs_down;
    s->u.drained = gs_drained;
    s->sin.fn = gs_on_in;
    s->sout.fn = gs_on_out;
    s->opening = true;
    s->depth++;
    gw_link_join(l, &s->u); /* `up` at once when the link is up */
    s->depth--;
    s->opening = false;
    if (s->failed_early) {
        snprintf(why, whylen, "%s", s->why);
        s->gone = true;
        gs_teardown(s, true);
        gs_maybe_free(s);
        return NULL;
    }
    return s;
}

int gw_gsock_write(struct gw_gsock *s, const void *data, size_t len)
{
    struct sbx_conn *c = gs_conn(s);
    struct sbx_err err;

    if (s->gone || s->in_done || s->shut_want) {
        return -1;
    }
    if (len > 0) {
        if (!s->open || c == NULL || s->plen > s->poff ||
            sbx_conn_queued(c, s->in) + len > GS_CORE_MAX) {
            if (gs_pend_add(s, data, len) < 0) {
                return -1;
            }
            (void)gs_pump(s);
        } else if (sbx_conn_write(c, s->in, data, len, &err) < 0) {
            if (strcmp(err.code, SBX_E_LIMIT) != 0 || gs_pend_add(s, data, len) < 0) {
                return -1;
            }
        }
        if (s->l != NULL) {
            /* A write that fails at once (out of memory) ends the link, and with it this socket:
             * held until we are done with it. */
            s->depth++;
            gw_link_flush(s->l);
            s->depth--;
            if (s->gone) {
                gs_maybe_free(s);
                return -1;
            }
        }
    }
    if (gs_queued(s) > GW_GSOCK_HIGH) {
        s->blocked = true;
        return 1;
    }
    return 0;
}

void gw_gsock_shutdown(struct gw_gsock *s)
{
    if (s->gone || s->in_done || s->shut_want) {
        return;
    }
    s->shut_want = true;
    s->depth++;
    if (s->open) {
        (void)gs_pump(s);
        if (s->l != NULL) {
            gw_link_flush(s->l);
        }
        if (!s->shut_want && s->out_done) {
            gs_finish(s, NULL, NULL); /* both directions done; closed comes now */
        }
    }
    s->depth--;
    gs_maybe_free(s);
}

void gw_gsock_pause(struct gw_gsock *s, bool pause)
{
    struct sbx_conn *c;
    struct sbx_err err;

    if (s->gone || s->paused == pause) {
        return;
    }
    s->paused = pause;
    c = gs_conn(s);
    if (!pause && s->unacked > 0 && c != NULL && s->open) {
        (void)sbx_conn_consumed(c, s->out, s->unacked, &err);
        s->unacked = 0;
        gw_link_flush(s->l);
    }
}

void gw_gsock_close(struct gw_gsock *s)
{
    if (s == NULL || s->gone) {
        return;
    }
    s->gone = true;
    gs_teardown(s, true);
    gs_maybe_free(s);
}

/* --- gw_pid_port_find ----------------------------------------------------------------------- */

/* Holders of listening TCP sockets checked for descent per lookup, and the depth of a walk. */
#define PP_CAND_MAX  32u
#define PP_DEPTH_MAX 32u
#define PP_NOT_MAX   256u

struct pp_cand {
    uint32_t pid;
    uint32_t port; /* its lowest listening TCP port */
};

struct gw_pid_port {
    struct gw_link_user u;
    struct gw_link_req req;
    struct gw_link *l; /* NULL once down (or let go with nothing in flight) */
    struct gw_sandbox *sb;
    gw_pid_port_fn cb;
    void *user;
    uint32_t pid, ospid;
    uint32_t own; /* the lowest port the process itself holds; 65536: none */
    bool req_out; /* a request of ours is in flight (req points into us) */
    bool gone;    /* answered or cancelled */
    bool started; /* proc.list sent */
    bool opening; /* inside gw_pid_port_find */
    bool failed_early;
    int depth;
    struct pp_cand cand[PP_CAND_MAX]; /* holders of lower ports than `own`, by port */
    unsigned ncand, ci;
    uint32_t cur; /* the pid whose stat is read */
    unsigned walk;
    uint32_t fh, ppid;
    uint32_t chain[PP_DEPTH_MAX]; /* this walk's pids: not descendants when it ends at init */
    uint32_t not_desc[PP_NOT_MAX];
    unsigned nnot;
    char why[256];
};

static void pp_maybe_free(struct gw_pid_port *q)
{
    if (q->gone && !q->req_out && q->depth == 0) {
        free(q);
    }
}

static void pp_leave(struct gw_pid_port *q)
{
    if (q->l != NULL) {
        gw_link_leave(q->l, &q->u);
        if (!q->req_out) {
            q->l = NULL;
        }
    }
}

static void pp_done(struct gw_pid_port *q, uint16_t port, const char *why)
{
    if (q->gone) {
        return;
    }
    q->gone = true;
    pp_leave(q);
    q->cb(q->user, port, why);
}

__attribute__((format(printf, 2, 3))) static void pp_fail(struct gw_pid_port *q, const char *fmt,
                                                          ...)
{
    char why[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (q->opening) {
        snprintf(q->why, sizeof(q->why), "%s", why);
        q->failed_early = true;
        q->gone = true;
        pp_leave(q);
        return;
    }
    pp_done(q, 0, why);
}

static bool pp_u32(const msgpack_object *map, const char *key, uint32_t *out)
{
    const msgpack_object *v = sbx_obj_get(map, key);

    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)v->via.u64;
    return true;
}

static bool pp_known_not(const struct gw_pid_port *q, uint32_t pid)
{
    for (unsigned i = 0; i < q->nnot; i++) {
        if (q->not_desc[i] == pid) {
            return true;
        }
    }
    return false;
}

static bool pp_link_ending(const struct sbx_event *ev)
{
    return ev->error != NULL && strcmp(ev->error->code, SBX_E_EOF) == 0;
}

static void pp_orphan_closed(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);

    (void)ev;
    q->req_out = false;
    q->l = NULL;
    pp_maybe_free(q);
}

/* An answer came after the lookup was let go (cancelled): a file handle it leaves open is closed
 * anyway, as the agent keeps a connection's handles until the connection ends and the link is
 * shared by every lookup and guest socket of the sandbox (SBX_FS_HANDLES_MAX). */
static void pp_let_go(struct gw_pid_port *q, bool fh_open, uint32_t fh)
{
    struct sbx_conn *c = q->l != NULL ? gw_link_conn(q->l) : NULL;
    struct sbx_err err;

    q->req_out = false;
    if (fh_open && c != NULL) {
        q->req.fn = pp_orphan_closed;
        if (sbx_fs_close(c, fh, &q->req, NULL, &err) == 0) {
            q->req_out = true;
            return;
        }
    }
    q->l = NULL;
}

/* The common start of every answer: false when there is nothing to do (let go meanwhile, or
 * the link is ending: `down` follows with its reason). */
static bool pp_enter(struct gw_pid_port *q, const struct sbx_event *ev)
{
    q->req_out = false;
    if (q->gone) {
        pp_let_go(q, false, 0);
        return false;
    }
    return !pp_link_ending(ev);
}

static struct sbx_conn *pp_conn(struct gw_pid_port *q)
{
    struct sbx_conn *c = q->l != NULL ? gw_link_conn(q->l) : NULL;

    if (c == NULL) {
        pp_fail(q, "the sandbox's agent is not connected");
    }
    return c;
}

static void pp_sent(struct gw_pid_port *q, int r, const char *what, const struct sbx_err *err)
{
    if (r < 0) {
        pp_fail(q, "%s: %s: %s", what, err->code, err->msg);
        return;
    }
    q->req_out = true;
}

static void pp_walk(struct gw_pid_port *q);

/* The walk from cand[ci] ended at init (or too deep, or a known non-descendant): its chain is no
 * descendant; the next candidate, or the answer. */
static void pp_next_cand(struct gw_pid_port *q)
{
    for (unsigned i = 0; i <= q->walk && i < PP_DEPTH_MAX; i++) {
        if (q->nnot < PP_NOT_MAX && !pp_known_not(q, q->chain[i])) {
            q->not_desc[q->nnot++] = q->chain[i];
        }
    }
    while (++q->ci < q->ncand && pp_known_not(q, q->cand[q->ci].pid)) {
    }
    if (q->ci >= q->ncand) {
        if (q->own < 65536) {
            pp_done(q, (uint16_t)q->own, NULL);
        } else {
            pp_fail(q, "process %u listens on no TCP port (yet)", q->pid);
        }
        return;
    }
    q->walk = 0;
    q->cur = q->chain[0] = q->cand[q->ci].pid;
    pp_walk(q);
}

static void pp_closed(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);

    q->depth++;
    if (pp_enter(q, ev)) {
        /* ppid 0 is "no parent" (or an unreadable stat): never the process, even when the
         * agent's proc.list gave it pid 0. */
        if (q->ppid != 0 && q->ppid == q->ospid) {
            pp_done(q, (uint16_t)q->cand[q->ci].port, NULL); /* the lowest: sorted */
        } else if (q->ppid <= 1 || q->walk + 1 >= PP_DEPTH_MAX || pp_known_not(q, q->ppid)) {
            pp_next_cand(q);
        } else {
            q->walk++;
            q->cur = q->chain[q->walk] = q->ppid;
            pp_walk(q);
        }
    }
    q->depth--;
    pp_maybe_free(q);
}

static void pp_read(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);
    struct sbx_conn *c;
    struct sbx_err err;
    const char *p, *rp;
    char buf[512];
    unsigned long ppid;
    size_t n;

    q->depth++;
    if (q->gone) {
        pp_let_go(q, !pp_link_ending(ev), q->fh);
    } else if (pp_enter(q, ev)) {
        q->ppid = 0;
        /* A result without data (a hostile agent's) reads as no parent: sbx_obj_bytes takes a
         * missing field as absent. */
        if (ev->error == NULL && sbx_obj_bytes(sbx_obj_get(ev->result, "data"), &p, &n) && n > 0) {
            /* "pid (comm) S ppid ...": comm may hold spaces and parentheses; the last ')'
             * ends it. */
            n = n < sizeof(buf) - 1 ? n : sizeof(buf) - 1;
            memcpy(buf, p, n);
            buf[n] = '\0';
            rp = strrchr(buf, ')');
            if (rp != NULL && sscanf(rp + 1, " %*c %lu", &ppid) == 1 && ppid <= UINT32_MAX) {
                q->ppid = (uint32_t)ppid;
            }
        }
        if ((c = pp_conn(q)) != NULL) {
            q->req.fn = pp_closed;
            pp_sent(q, sbx_fs_close(c, q->fh, &q->req, NULL, &err), "fs.close", &err);
        }
    }
    q->depth--;
    pp_maybe_free(q);
}

static void pp_opened(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);
    struct sbx_conn *c;
    struct sbx_err err;

    q->depth++;
    if (q->gone) {
        uint32_t fh = 0;
        bool open = ev->error == NULL && pp_u32(ev->result, "fh", &fh);

        pp_let_go(q, open, fh);
    } else if (pp_enter(q, ev)) {
        if (ev->error != NULL || !pp_u32(ev->result, "fh", &q->fh)) {
            pp_next_cand(q); /* gone meanwhile (or unreadable): not a descendant now */
        } else if ((c = pp_conn(q)) != NULL) {
            q->req.fn = pp_read;
            pp_sent(q, sbx_fs_read(c, q->fh, 511, NULL, &q->req, NULL, &err), "fs.read", &err);
        }
    }
    q->depth--;
    pp_maybe_free(q);
}

/* Read the parent of q->cur from /proc/CUR/stat. */
static void pp_walk(struct gw_pid_port *q)
{
    struct sbx_conn *c = pp_conn(q);
    struct sbx_err err;
    char path[32];

    if (c == NULL) {
        return;
    }
    snprintf(path, sizeof(path), "/proc/%u/stat", q->cur);
    q->req.fn = pp_opened;
    pp_sent(q, sbx_fs_open(c, path, SBX_FS_O_READ, -1, NULL, &q->req, NULL, &err), "fs.open", &err);
}

static void pp_listening(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);
    const msgpack_object *socks;
    unsigned n = 0;

    q->depth++;
    if (!pp_enter(q, ev)) {
        goto out;
    }
    if (ev->error != NULL) {
        pp_fail(q, "net.listening: %s: %s", ev->error->code, ev->error->msg);
        goto out;
    }
    socks = sbx_obj_get(ev->result, "sockets");
    q->own = 65536;
    q->ncand = 0;
    if (socks == NULL || socks->type != MSGPACK_OBJECT_ARRAY) {
        socks = NULL;
    }
    /* Two passes: the process's own lowest port first, then the holders of lower ports (only
     * those can change the answer), keeping the PP_CAND_MAX lowest: on a busy host the serving
     * child may come late in the table. */
    for (int pass = 0; pass < 2 && socks != NULL; pass++) {
        for (uint32_t i = 0; i < socks->via.array.size; i++) {
            struct sbx_listening li;
            struct sbx_err err;
            unsigned k, worst;

            if (sbx_listening_read(&socks->via.array.ptr[i], &li, &err) < 0 || li.proto_len < 3 ||
                memcmp(li.proto, "tcp", 3) != 0 || !li.has_pid || li.port == 0 || li.port > 65535) {
                continue;
            }
            if (pass == 0) {
                if (li.pid == q->ospid && li.port < q->own) {
                    q->own = li.port;
                }
                continue;
            }
            if (li.pid == q->ospid || li.pid <= 1 || li.port >= q->own) {
                continue;
            }
            for (k = 0; k < q->ncand && q->cand[k].pid != li.pid; k++) {
            }
            if (k < q->ncand) {
                q->cand[k].port = li.port < q->cand[k].port ? li.port : q->cand[k].port;
                continue;
            }
            if (q->ncand < PP_CAND_MAX) {
                q->cand[q->ncand].pid = li.pid;
                q->cand[q->ncand].port = li.port;
                q->ncand++;
                continue;
            }
            for (worst = 0, k = 1; k < q->ncand; k++) {
                worst = q->cand[k].port > q->cand[worst].port ? k : worst;
            }
            if (li.port < q->cand[worst].port) {
                q->cand[worst].pid = li.pid;
                q->cand[worst].port = li.port;
            }
        }
    }
    /* Sorted by port: the first that descends from the process wins. */
    n = q->ncand;
    for (unsigned i = 1; i < n; i++) {
        struct pp_cand t = q->cand[i];
        unsigned j = i;

        for (; j > 0 && q->cand[j - 1].port > t.port; j--) {
            q->cand[j] = q->cand[j - 1];
        }
        q->cand[j] = t;
    }
    if (n == 0) {
        if (q->own < 65536) {
            pp_done(q, (uint16_t)q->own, NULL);
        } else {
            pp_fail(q, "process %u listens on no TCP port (yet)", q->pid);
        }
        goto out;
    }
    q->ci = 0;
    q->walk = 0;
    q->cur = q->chain[0] = q->cand[0].pid;
    pp_walk(q);
out:
    q->depth--;
    pp_maybe_free(q);
}

static void pp_listed(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct gw_pid_port *q = container_of(r, struct gw_pid_port, req);
    const msgpack_object *procs;
    struct sbx_conn *c;
    struct sbx_err err;
    bool found = false;

    q->depth++;
    if (!pp_enter(q, ev)) {
        goto out;
    }
    if (ev->error != NULL) {
        pp_fail(q, "proc.list: %s: %s", ev->error->code, ev->error->msg);
        goto out;
    }
    procs = sbx_obj_get(ev->result, "procs");
    for (uint32_t i = 0; procs != NULL && procs->type == MSGPACK_OBJECT_ARRAY &&
                         i < procs->via.array.size && !found;
         i++) {
        const msgpack_object *e = &procs->via.array.ptr[i];
        const msgpack_object *state = sbx_obj_get(e, "state");
        uint32_t id;

        if (!pp_u32(e, "id", &id) || id != q->pid) {
            continue;
        }
        found = true;
        if (!pp_u32(e, "pid", &q->ospid) ||
            (state != NULL && state->type == MSGPACK_OBJECT_STR && state->via.str.size == 6 &&
             memcmp(state->via.str.ptr, "exited", 6) == 0)) {
            pp_fail(q, "process %u has exited", q->pid);
            goto out;
        }
    }
    if (!found) {
        pp_fail(q, "no process %u in the sandbox", q->pid);
    } else if ((c = pp_conn(q)) != NULL) {
        q->req.fn = pp_listening;
        pp_sent(q, sbx_net_listening(c, &q->req, NULL, &err), "net.listening", &err);
    }
out:
    q->depth--;
    pp_maybe_free(q);
}

static void pp_up(struct gw_link_user *u, struct sbx_conn *c)
{
    struct gw_pid_port *q = container_of(u, struct gw_pid_port, u);
    struct sbx_err err;

    q->depth++;
    if (!q->gone && !q->started) {
        q->started = true;
        q->req.fn = pp_listed;
        pp_sent(q, sbx_proc_list(c, &q->req, NULL, &err), "proc.list", &err);
    }
    q->depth--;
    pp_maybe_free(q);
}

static void pp_down(struct gw_link_user *u, const char *why)
{
    struct gw_pid_port *q = container_of(u, struct gw_pid_port, u);

    q->depth++;
    q->l = NULL;
    if (q->sb->state != GW_SB_READY) {
        pp_fail(q, "the sandbox stopped");
    } else {
        pp_fail(q, "%s", why);
    }
    q->depth--;
    pp_maybe_free(q);
}

struct gw_pid_port *gw_pid_port_find(struct gw_sandbox *sb, uint32_t pid, gw_pid_port_fn cb,
                                     void *user, char *why, size_t whylen)
{
    struct gw_pid_port *q;
    struct gw_link *l;

    if (cb == NULL) {
        snprintf(why, whylen, "no callback");
        return NULL;
    }
    l = gw_link_get(sb, why, whylen);
    if (l == NULL) {
        return NULL;
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    q->l = l;
    q->sb = sb;
    q->cb = cb;
    q->user = user;
    q->pid = pid;
    q->u.up = pp_up;
    q->u.down = pp_down;
    q->opening = true;
    q->depth++;
    gw_link_join(l, &q->u);
    q->depth--;
    q->opening = false;
    if (q->failed_early) {
        snprintf(why, whylen, "%s", q->why);
        pp_maybe_free(q);
        return NULL;
    }
    return q;
}

void gw_pid_port_cancel(struct gw_pid_port *q)
{
    if (q == NULL || q->gone) {
        return;
    }
    q->gone = true;
    pp_leave(q);
    pp_maybe_free(q);
}
