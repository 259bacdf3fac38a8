/*
 * SSH access (expose/ssh, docs/GATEWAY.md "SSH"): an SSH server on --ssh-listen whose sessions
 * are processes in a sandbox, run through the sandbox's link (link.h).
 *
 * libssh (0.10, server API) runs in non-blocking mode on the gateway's loop, without threads:
 * the gateway accepts on its own listening socket, hands each connection's fd to libssh
 * (ssh_bind_accept_fd), adds the session to an ssh_event of its own and watches the fd with a
 * uv_poll_t; readiness drives ssh_handle_key_exchange (until the key exchange is done) and then
 * ssh_event_dopoll(ev, 0). libssh only writes to the socket after its own poll saw POLLOUT, so the
 * uv_poll also watches for writability whenever libssh says output is pending
 * (ssh_get_poll_flags). libssh calls our callbacks from inside those calls (and from inside
 * writes, which may process input): callbacks only record what happened; the work (spawning,
 * relaying, closing, freeing) is done by conn_pump when the outermost entry into a connection
 * returns (conn_enter/conn_leave), never while libssh is on the stack.
 *
 * Authentication: the user name is the secret. expose/ssh mints a random one per call that maps
 * to its sandbox and stays valid while that sandbox runs (any number of connections, as the SDK's
 * docs describe it: "anyone with knowledge of the username can connect"); grants are kept in
 * DATA/ssh.json (mode 0600) so that they survive a restart of the gateway with their sandbox.
 * Only the `none` method is accepted, and only for a valid name (compared in constant time);
 * every other method and name is refused alike, and a connection gets SSH_AUTH_TRIES attempts and
 * SSH_AUTH_MS for key exchange plus authentication.
 *
 * Flow control. Client -> agent: a channel's bytes are taken (sbx_conn_write on the process's
 * stdin stream) only while that stream's queue is under SSH_AGENT_HIGH; the rest stays in
 * libssh's channel buffer, which keeps the client's window from growing (so a client cannot make
 * us hold more than about one window); taking resumes when the agent has taken the queue down to
 * SSH_AGENT_LOW. A client that sends beyond its window (libssh buffers it anyway) is disconnected
 * at SSH_IN_HELD_MAX.
 * Agent -> client: output is queued per stream and acknowledged to the agent (sbx_conn_consumed)
 * only as it is written into the SSH channel, within the channel's window and while less than
 * SSH_OUT_HIGH bytes handed to libssh have not reached the socket yet (libssh's "write won't
 * block" callback says when its socket buffer emptied).
 * What libssh queues toward the client on its own has no cap in libssh: every channel open beyond
 * the cap, global request, refused channel request or unknown message gets an answer appended to
 * its output buffer, and so do our exit statuses, EOFs, closes and stderr notes. A client that
 * sends such requests but never reads its socket would grow that buffer without bound. We count
 * it (ssh_set_counters): the payload bytes of the packets libssh put into its buffer, plus
 * SSH_PKT_OVERHEAD per packet (an upper bound), minus the bytes that reached the socket, both
 * measured from the last moment the buffer was seen empty (so the over-estimate does not add up).
 * Past SSH_BACKLOG_HIGH we stop reading the client (back-pressure rather than a cap alone: a
 * client is only ever answered for what it sent, so with its requests left in the kernel its TCP
 * window closes and nothing more is generated, and a slow but honest client is not cut; libssh
 * still reads at most one 4 KiB chunk whenever the socket turns writable or we write, which is
 * why a hard cap stays) and process output is not written while it is over SSH_OUT_HIGH; past
 * SSH_BACKLOG_MAX the connection is cut. Packets libssh holds back during a key re-exchange are
 * not in its buffer (nor counted) until the exchange ends: a channel write that was not counted
 * (rekey_held) stops our output until libssh has counted as much again.
 *
 * Every input is hostile: names, commands, env requests, terminal sizes, window sizes are
 * checked and bounded; connections, channels, grants and kill timers have caps. At the
 * connection cap a new connection takes the place of the oldest one that has not authenticated
 * (so idle pre-authentication connections cannot lock clients out); only authenticated ones make
 * it refused. One sandbox gets at most SSH_CONNS_PER_SB authenticated connections (its user names
 * are shareable credentials: their holders must not lock out every other sandbox), a connection
 * that runs no process for --ssh-idle-timeout is closed, and TCP keepalive (--ssh-keepalive)
 * drops clients that vanished without closing. A channel we closed stays counted (a "sink" that
 * drops what the client still sends on it) until the client closes it too: libssh would otherwise
 * keep it and buffer that data without bound.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "link.h"

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

/* --- caps ----------------------------------------------------------------------------------- */

#define SSH_CONNS_MAX     64    /* SSH connections at once; beyond: see on_listen */
#define SSH_ACCEPT_BATCH  16    /* accepts per wake-up of the listener */
#define SSH_CHANS_MAX     10    /* session channels per connection (OpenSSH's MaxSessions) */
#define SSH_AUTH_MS       30000 /* key exchange + authentication deadline */
#define SSH_AUTH_TRIES    10    /* authentication requests per connection */
#define SSH_CLOSE_MS      2000  /* a connection we close gets this long to send its last bytes */
#define SSH_KILL_GRACE_MS 2000  /* SIGHUP, then SIGKILL this much later */
#define SSH_KA_PROBES     3     /* unanswered TCP keepalive probes before a client is dropped */
#define SSH_KA_MAX_S      32767 /* the kernel's largest TCP_KEEPIDLE and TCP_KEEPINTVL */
#define SSH_REAPERS_MAX   1024  /* pending SIGKILLs; beyond: SIGKILL at once */
#define SSH_OUT_HIGH      (1u << 20)   /* bytes given to libssh and not yet on the socket */
#define SSH_WRITE_CHUNK   (256u << 10) /* bytes written into one channel per turn */
#define SSH_PEND_MAX                                                                               \
    (8u << 20) /* agent output queued per stream (the agent's credit bounds                        \
                  it far below; beyond: the stream is cancelled) */
#define SSH_IN_HELD_MAX                                                                            \
    (8u << 20) /* client bytes libssh holds for one channel (a client that                         \
                  keeps to its window stays under about 3.5 MiB) */
#define SSH_READ_CHUNK (64u << 10)
/* Authenticated connections to one sandbox; beyond: refused (conn_share). */
#define SSH_CONNS_PER_SB (SSH_CONNS_MAX / 2)
/* libssh's output buffer (see the top): a packet takes at most this much beyond its payload on the
 * wire (length and padding length 5, padding up to 19, MAC up to 64); above SSH_BACKLOG_HIGH the
 * client is not read (above SSH_OUT_HIGH no process output is written), above SSH_BACKLOG_MAX it is
 * disconnected. */
#define SSH_PKT_OVERHEAD 96u
#define SSH_BACKLOG_HIGH (2u << 20)
#define SSH_BACKLOG_MAX  (8u << 20)
/* Client bytes queued toward the agent on a process's stdin above which the rest stays in libssh
 * (under SBX_CONN_QUEUE_MAX); taking resumes below SSH_AGENT_LOW, and then takes up to
 * SSH_AGENT_HIGH at once: every read lets libssh re-open the client's window (WINDOWBASE, 1.28 MB),
 * so each read must take more than that for what libssh holds to stay bounded. */
#define SSH_AGENT_HIGH    (3u << 20)
#define SSH_AGENT_LOW     (1u << 20)
#define SSH_GRANTS_MAX    1024   /* user names minted and valid; beyond: the oldest goes */
#define SSH_GRANTS_PER_SB 16     /* per sandbox; beyond: its oldest goes */
#define SSH_USER_LEN      32     /* [a-z0-9] */
#define SSH_ENV_MAX       16     /* env requests honoured per channel */
#define SSH_ENV_LEN       1024   /* bytes of one NAME=VALUE */
#define SSH_CMD_MAX       131072 /* an exec command (proc.spawn's `command` cap) */
#define SSH_DRAIN_MS      10000  /* proc.spawn drain_ms: output a slow client has not read yet */
#define SSH_FILE_MAX      (1u << 20) /* DATA/ssh.json */

#define SSH_USER_ALPHABET "abcdefghijklmnopqrstuvwxyz0123456789"

/* The login shell of --user (its passwd entry; bash, then sh, when that is not executable), as a
 * login shell in --cwd. */
#define SSH_SHELL_SCRIPT                                                                           \
    "s=$(getent passwd \"$(id -u)\" 2>/dev/null | cut -d: -f7); "                                  \
    "[ -n \"$s\" ] && [ -x \"$s\" ] || s=/bin/bash; [ -x \"$s\" ] || s=/bin/sh; "                  \
    "SHELL=$s; export SHELL; exec \"$s\" -l"

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

/* --- state ---------------------------------------------------------------------------------- */

struct grant {
    struct grant *next;
    char user[SSH_USER_LEN + 1];
    char sandbox[32];
    int64_t created_ms;
};

/* A SIGKILL owed to a process group whose SSH client went away (after SIGHUP). */
struct reaper {
    struct reaper *next, *prev;
    struct gw_ssh *srv;
    uv_timer_t timer;
    char sandbox[32];
    uint32_t proc;
};

struct sconn;

struct gw_ssh {
    struct gw *g;
    ssh_bind bind;
    int lfd;
    uv_poll_t lpoll;
    bool lpoll_open, stopping;
    char host[256]; /* the listen host as given ("127.0.0.1", "::1", "0.0.0.0") */
    bool wildcard;  /* 0.0.0.0 or :: : expose/ssh names the host the API was reached at */
    int port;       /* bound */
    struct sconn *conns;
    unsigned nconns;
    unsigned orphans; /* channels whose connection is gone, waiting for their proc.spawn answer */
    struct grant *grants;
    unsigned ngrants;
    struct reaper *reapers;
    unsigned nreapers;
    bool full_logged;
    char path[PATH_MAX]; /* DATA/ssh.json */
};

enum { SC_KEX = 1, SC_AUTH, SC_OPEN, SC_CLOSING };

/* Byte queue: agent output waiting for the SSH channel. */
struct obuf {
    uint8_t *p;
    size_t off, len, cap;
};

struct schan;

/* One agent stream of a channel (stdin, stdout, stderr): what sbx_conn_stream_set_user holds. */
struct cstream {
    struct gw_link_stream st;
    struct schan *ch;
    int which;     /* 0 stdin, 1 stdout, 2 stderr */
    bool attached; /* the core holds &st for the stream: until its END or CANCEL comes, or we let
                      go of it (whatever *_open says about writing or reading it) */
};

/* A libssh channel we closed that the client has not closed yet (see the top). */
struct sink {
    struct sink *next;
    ssh_channel ch;
    struct ssh_channel_callbacks_struct cb;
    bool closed; /* the client's close came: conn_pump frees it */
};

struct sconn {
    struct sconn *next, *prev;
    struct gw_ssh *srv;
    ssh_session sess;
    ssh_event event;
    uv_poll_t poll;
    uv_timer_t timer; /* the auth deadline, the idle one (conn_idle), then the closing one */
    int poll_events;
    bool poll_open, timer_open, handles_init;
    int state;
    unsigned auth_tries;
    struct ssh_server_callbacks_struct scb;
    char sandbox[32];
    struct gw_link *link;
    struct gw_link_user lu;
    struct sbx_conn *c; /* the link's connection while it is up */
    struct schan *chans;
    unsigned nchans;
    struct sink *sinks; /* count against SSH_CHANS_MAX with nchans */
    unsigned nsinks;
    size_t unsent; /* bytes written into channels since libssh's socket buffer was last empty */
    struct ssh_counter_struct sock_cnt, raw_cnt; /* ssh_set_counters: socket bytes, packets */
    uint64_t base_queued, base_sent; /* conn_backlog's counts when the buffer was last empty */
    uint64_t rekey_held, rekey_mark; /* channel bytes libssh held back (a key re-exchange) */
    bool held;                       /* not reading the client: its answers back up */
    int depth;                       /* our entries on the stack */
    bool dead, torn;
    char peer[80];
    char why[256]; /* why the sessions end (the sandbox stopped): told on stderr */
};

enum { CH_NEW = 0, CH_WANT, CH_SPAWNING, CH_RUNNING, CH_DONE };

struct schan {
    struct schan *next;
    struct sconn *sc; /* NULL once the connection is gone (proc.spawn still pending) */
    struct gw_ssh *srv;
    ssh_channel ch; /* NULL once released */
    struct ssh_channel_callbacks_struct cb;
    int state;
    bool shell, pty;
    char *command;
    uint32_t rows, cols;
    char term[65];
    char *env[SSH_ENV_MAX + 1];
    unsigned nenv;
    char sandbox[32];
    struct gw_link *link; /* where proc.spawn went */
    struct gw_link_req spawn_req;
    uint32_t proc, in, out, err; /* agent process and stream ids */
    struct cstream s_in, s_out, s_err;
    struct obuf outq, errq;
    bool in_open, out_open, err_open;
    size_t in_held; /* client bytes libssh holds for us */
    bool client_eof, client_closed, exited, dropped;
    bool remote_closed; /* the client's close came (client_closed also means writing failed) */
    struct sbx_exit exit;
    char fail[300]; /* the process could not start: said on stderr, then exit status 1 */
};

static void conn_pump(struct sconn *sc);
static void conn_teardown(struct sconn *sc);
static void srv_maybe_free(struct gw_ssh *srv);

/* libuv callbacks of a connection. */
static void conn_on_poll(uv_poll_t *h, int status, int events);
static void conn_on_timer(uv_timer_t *t);

/* --- byte queues ---------------------------------------------------------------------------- */

static int obuf_add(struct obuf *q, const uint8_t *data, size_t len)
{
    if (q->off > 0 && (q->off >= q->len || q->off > q->cap / 2)) {
        memmove(q->p, q->p + q->off, q->len - q->off);
        q->len -= q->off;
        q->off = 0;
    }
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : 64u << 10;
        uint8_t *p;

        while (cap < q->len + len) {
            cap *= 2;
        }
        p = realloc(q->p, cap);
        if (p == NULL) {
            return -1;
        }
        q->p = p;
        q->cap = cap;
    }
    memcpy(q->p + q->len, data, len);
    q->len += len;
    return 0;
}

static size_t obuf_size(const struct obuf *q)
{
    return q->len - q->off;
}

static void obuf_drop(struct obuf *q, size_t n)
{
    q->off += n;
    if (q->off >= q->len) {
        q->off = q->len = 0;
    }
}

static void obuf_free(struct obuf *q)
{
    free(q->p);
    memset(q, 0, sizeof(*q));
}

/* --- grants --------------------------------------------------------------------------------- */

static void grants_save(struct gw_ssh *srv)
{
    json_t *arr = json_array(), *root;
    char *text;

    if (arr == NULL) {
        return;
    }
    for (struct grant *gr = srv->grants; gr != NULL; gr = gr->next) {
        (void)json_array_append_new(arr, json_pack("{s:s, s:s, s:I}", "username", gr->user,
                                                   "sandbox", gr->sandbox, "created_ms",
                                                   (json_int_t)gr->created_ms));
    }
    root = json_pack("{s:o}", "grants", arr); /* steals @arr */
    text = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (text == NULL || gw_file_write_atomic(srv->path, text, strlen(text), 0600) < 0) {
        gw_log("ssh: writing %s: %s", srv->path, text == NULL ? "out of memory" : strerror(errno));
    }
    free(text);
}

/* A grant is alive while its sandbox exists and is not stopping. */
static bool grant_alive(struct gw_ssh *srv, const struct grant *gr)
{
    struct gw_sandbox *sb = gw_sandbox_find(srv->g, gr->sandbox);

    return sb != NULL && (sb->state == GW_SB_BOOTING || sb->state == GW_SB_READY);
}

/* Drop grants of sandboxes that are gone. Returns true when some went. */
static bool grants_prune(struct gw_ssh *srv)
{
    bool changed = false;

    for (struct grant **pp = &srv->grants; *pp != NULL;) {
        struct grant *gr = *pp;

        if (!grant_alive(srv, gr)) {
            *pp = gr->next;
            free(gr);
            srv->ngrants--;
            changed = true;
        } else {
            pp = &gr->next;
        }
    }
    return changed;
}

static bool user_valid(const char *s)
{
    size_t n = strlen(s);

    return n == SSH_USER_LEN && strspn(s, SSH_USER_ALPHABET) == n;
}

static void grants_load(struct gw_ssh *srv)
{
    char *text = NULL;
    size_t len = 0;
    json_t *root, *arr, *e;
    size_t i;

    if (gw_file_read(srv->path, SSH_FILE_MAX, &text, &len) < 0) {
        if (errno != ENOENT) {
            gw_log("ssh: reading %s: %s (grants dropped)", srv->path, strerror(errno));
        }
        return;
    }
    root = json_loadb(text, len, 0, NULL);
    free(text);
    arr = json_object_get(root, "grants");
    json_array_foreach(arr, i, e)
    {
        const char *u = json_string_value(json_object_get(e, "username"));
        const char *id = json_string_value(json_object_get(e, "sandbox"));
        int64_t created = 0;
        struct grant *gr;

        if (srv->ngrants >= SSH_GRANTS_MAX || u == NULL || id == NULL || !user_valid(u) ||
            !gw_sandbox_id_valid(id) ||
            gw_json_int64(json_object_get(e, "created_ms"), &created) < 0) {
            continue;
        }
        gr = calloc(1, sizeof(*gr));
        if (gr == NULL) {
            break;
        }
        memcpy(gr->user, u, SSH_USER_LEN + 1);
        (void)snprintf(gr->sandbox, sizeof gr->sandbox, "%s", id);
        gr->created_ms = created;
        /* Kept in file order (newest first). */
        struct grant **pp = &srv->grants;
        while (*pp != NULL) {
            pp = &(*pp)->next;
        }
        *pp = gr;
        srv->ngrants++;
    }
    json_decref(root);
    if (grants_prune(srv)) {
        grants_save(srv);
    }
}

/* Remove the oldest grant (of @sandbox when not NULL). */
static void grants_drop_oldest(struct gw_ssh *srv, const char *sandbox)
{
    struct grant **victim = NULL;

    for (struct grant **pp = &srv->grants; *pp != NULL; pp = &(*pp)->next) {
        if (sandbox == NULL || strcmp((*pp)->sandbox, sandbox) == 0) {
            victim = pp; /* the list is newest first: the last match is the oldest */
        }
    }
    if (victim != NULL) {
        struct grant *gr = *victim;

        *victim = gr->next;
        free(gr);
        srv->ngrants--;
    }
}

/* The grant for user name @user, compared in constant time against every grant. */
static struct grant *grant_find(struct gw_ssh *srv, const char *user)
{
    struct grant *found = NULL;

    if (strlen(user) != SSH_USER_LEN) {
        /* Still walk the list: the time does not tell whether the length was right. */
        user = "";
    }
    for (struct grant *gr = srv->grants; gr != NULL; gr = gr->next) {
        if (gw_ct_streq(user, gr->user) && found == NULL) {
            found = gr;
        }
    }
    return found;
}

/* Where the failures of libsbx calls that need no answer go (a kill of a process already gone,
 * a cancel of a stream already ended): libsbx writes every failure into its err, never NULL. One
 * loop thread: nothing reads it. */
static struct sbx_err ignored;

/* --- SIGHUP, then SIGKILL ------------------------------------------------------------------- */

static void kill_now(struct gw_ssh *srv, const char *sandbox, uint32_t proc, int signo)
{
    struct gw_sandbox *sb = gw_sandbox_find(srv->g, sandbox);
    struct sbx_conn *c = sb != NULL && sb->link != NULL ? gw_link_conn(sb->link) : NULL;

    if (c != NULL) {
        (void)sbx_proc_kill(c, proc, signo, true, NULL, NULL, &ignored);
        gw_link_flush(sb->link);
    }
}

static void reaper_closed(uv_handle_t *h)
{
    struct reaper *r = h->data;
    struct gw_ssh *srv = r->srv;

    free(r);
    srv_maybe_free(srv);
}

static void reaper_done(struct reaper *r)
{
    struct gw_ssh *srv = r->srv;

    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        srv->reapers = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    srv->nreapers--;
    uv_close((uv_handle_t *)&r->timer, reaper_closed);
}

static void on_reaper(uv_timer_t *t)
{
    struct reaper *r = t->data;

    kill_now(r->srv, r->sandbox, r->proc, SIGKILL);
    reaper_done(r);
}

/* Send SIGHUP to the group of process @proc now and SIGKILL after SSH_KILL_GRACE_MS (at once when
 * too many are pending or the server stops). @c is the link's connection (may be NULL: then both
 * go through the sandbox's link, if any). */
static void kill_process(struct gw_ssh *srv, struct sbx_conn *c, const char *sandbox, uint32_t proc)
{
    struct reaper *r;

    if (c != NULL) {
        (void)sbx_proc_kill(c, proc, SIGHUP, true, NULL, NULL, &ignored);
    } else {
        kill_now(srv, sandbox, proc, SIGHUP);
    }
    r = srv->stopping || srv->nreapers >= SSH_REAPERS_MAX ? NULL : calloc(1, sizeof(*r));
    if (r == NULL) {
        if (c != NULL) {
            (void)sbx_proc_kill(c, proc, SIGKILL, true, NULL, NULL, &ignored);
        } else {
            kill_now(srv, sandbox, proc, SIGKILL);
        }
        return;
    }
    r->srv = srv;
    (void)snprintf(r->sandbox, sizeof r->sandbox, "%s", sandbox);
    r->proc = proc;
    (void)uv_timer_init(srv->g->loop, &r->timer);
    r->timer.data = r;
    (void)uv_timer_start(&r->timer, on_reaper, SSH_KILL_GRACE_MS, 0);
    r->next = srv->reapers;
    if (r->next != NULL) {
        r->next->prev = r;
    }
    srv->reapers = r;
    srv->nreapers++;
}

/* --- channels ------------------------------------------------------------------------------- */

static void chan_free(struct schan *ch)
{
    obuf_free(&ch->outq);
    obuf_free(&ch->errq);
    free(ch->command);
    for (unsigned i = 0; i < ch->nenv; i++) {
        free(ch->env[i]);
    }
    free(ch);
}

static void chan_unlink(struct schan *ch)
{
    struct sconn *sc = ch->sc;

    if (sc == NULL) {
        return;
    }
    for (struct schan **pp = &sc->chans; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ch) {
            *pp = ch->next;
            sc->nchans--;
            break;
        }
    }
    ch->next = NULL;
    ch->sc = NULL;
}

/* Let go of the agent's side of @ch: stop relaying its streams and, while the process runs, kill
 * it (SIGHUP, then SIGKILL). @c may be NULL (the link is down: nothing to tell). */
static void chan_drop_process(struct schan *ch, struct sbx_conn *c)
{
    if (ch->dropped) {
        return;
    }
    ch->dropped = true;
    if (c != NULL) {
        struct cstream *cs[3] = { &ch->s_in, &ch->s_out, &ch->s_err };
        uint32_t ids[3] = { ch->in, ch->out, ch->err };
        bool open[3] = { ch->in_open, ch->out_open, ch->err_open };

        /* Every stream the core may still hold for @ch, also one we no longer write (stdin ended
         * with bytes still queued, or refused): its credit or cancel would reach freed memory. */
        for (int i = 0; i < 3; i++) {
            if (ids[i] != 0 && (cs[i]->attached || open[i])) {
                (void)sbx_conn_stream_set_user(c, ids[i], NULL);
                (void)sbx_conn_cancel(c, ids[i], &ignored);
                cs[i]->attached = false;
            }
        }
        if (ch->state == CH_RUNNING && !ch->exited) {
            kill_process(ch->srv, c, ch->sandbox, ch->proc);
        }
    }
    ch->out_open = ch->err_open = ch->in_open = false;
    obuf_free(&ch->outq);
    obuf_free(&ch->errq);
}

static int sink_data(ssh_session session, ssh_channel channel, void *data, uint32_t len,
                     int is_stderr, void *userdata)
{
    (void)session;
    (void)channel;
    (void)data;
    (void)is_stderr;
    (void)userdata;
    return (int)len; /* dropped */
}

static void sink_close(ssh_session session, ssh_channel channel, void *userdata)
{
    (void)session;
    (void)channel;
    ((struct sink *)userdata)->closed = true;
}

/* Close libssh channel @c of @sc (the session alive) and let go of it: freed at once when the
 * client closed it already, else kept as a sink until it does (or the connection ends). */
static void conn_sink(struct sconn *sc, ssh_channel c, bool remote_closed)
{
    struct sink *sk = remote_closed ? NULL : calloc(1, sizeof(*sk));

    if (sk != NULL) {
        sk->ch = c;
        sk->cb.userdata = sk;
        sk->cb.channel_data_function = sink_data;
        sk->cb.channel_close_function = sink_close;
        ssh_callbacks_init(&sk->cb);
        if (ssh_set_channel_callbacks(c, &sk->cb) == SSH_OK) {
            (void)ssh_channel_close(c); /* if not sent yet */
            sk->next = sc->sinks;
            sc->sinks = sk;
            sc->nsinks++;
            return;
        }
        free(sk);
    }
    ssh_channel_free(c); /* sends the close if not sent yet */
}

/* Free the sinks the client has closed (@all: every sink, libssh's channels left to ssh_free). */
static void conn_free_sinks(struct sconn *sc, bool all)
{
    for (struct sink **pp = &sc->sinks; *pp != NULL;) {
        struct sink *sk = *pp;

        if (!all && !sk->closed) {
            pp = &sk->next;
            continue;
        }
        *pp = sk->next;
        sc->nsinks--;
        if (!all) {
            (void)ssh_remove_channel_callbacks(sk->ch, &sk->cb);
            ssh_channel_free(sk->ch);
        }
        free(sk);
    }
}

/* Release @ch: its libssh channel (when @ssh_alive: closed, then freed or kept as a sink; else
 * left to ssh_free), its process (killed while it runs), and the struct unless proc.spawn is
 * still pending (then the answer frees it). */
static void chan_release(struct schan *ch, bool ssh_alive)
{
    struct sconn *sc = ch->sc;

    if (ch->ch != NULL) {
        (void)ssh_remove_channel_callbacks(ch->ch, &ch->cb);
        if (ssh_alive && sc != NULL) {
            conn_sink(sc, ch->ch, ch->remote_closed);
        }
        ch->ch = NULL;
    }
    if (ch->state == CH_SPAWNING) {
        /* The answer comes to on_spawn, which kills what started and frees @ch. */
        chan_unlink(ch);
        ch->srv->orphans++;
        return;
    }
    chan_drop_process(ch, sc != NULL ? sc->c : NULL);
    chan_unlink(ch);
    chan_free(ch);
}

/* libssh callbacks: record only (conn_pump acts once libssh has returned). */

/* How many more bytes stdin stream @in of @c may queue: up to SSH_AGENT_HIGH on the stream, and
 * within what the link's streams together may still queue (shared with sessions, the ingress and
 * other channels; sbx_conn_write refuses beyond it, and those bytes are the client's). */
static size_t in_room(struct sbx_conn *c, uint32_t in)
{
    size_t queued = sbx_conn_queued(c, in), total = sbx_conn_queued_total(c);
    size_t room = queued < SSH_AGENT_HIGH ? SSH_AGENT_HIGH - queued : 0;
    size_t left = total < SBX_CONN_QUEUE_TOTAL_MAX ? SBX_CONN_QUEUE_TOTAL_MAX - total : 0;

    return room < left ? room : left;
}

static int cb_data(ssh_session session, ssh_channel channel, void *data, uint32_t len,
                   int is_stderr, void *userdata)
{
    struct schan *ch = userdata;
    struct sconn *sc = ch->sc;
    size_t room, take;

    (void)session;
    (void)channel;
    if (is_stderr || sc == NULL) {
        return (int)len; /* a client's extended data has no meaning for a session: dropped */
    }
    if (len > SSH_IN_HELD_MAX) {
        /* The client ignores the window we gave it. */
        (void)snprintf(sc->why, sizeof sc->why, "the client overran its channel window");
        sc->dead = true;
        return (int)len;
    }
    if (ch->state == CH_DONE || (ch->state == CH_RUNNING && !ch->in_open)) {
        return (int)len; /* no stdin any more: dropped */
    }
    if (ch->state != CH_RUNNING || sc->c == NULL || ch->in_held > 0) {
        ch->in_held = len; /* libssh keeps it; taken once the process runs */
        return 0;
    }
    room = in_room(sc->c, ch->in);
    take = len < room ? len : room;
    if (take > 0 && sbx_conn_write(sc->c, ch->in, data, take, &ignored) < 0) {
        take = 0; /* the stream is finished or its queue full: held, the pump sorts it out */
    }
    ch->in_held = len - take;
    return (int)take;
}

static void cb_eof(ssh_session session, ssh_channel channel, void *userdata)
{
    struct schan *ch = userdata;

    (void)session;
    (void)channel;
    ch->client_eof = true;
}

static void cb_close(ssh_session session, ssh_channel channel, void *userdata)
{
    struct schan *ch = userdata;

    (void)session;
    (void)channel;
    ch->client_closed = true;
    ch->remote_closed = true;
}

static int cb_pty(ssh_session session, ssh_channel channel, const char *term, int width, int height,
                  int pxwidth, int pwheight, void *userdata)
{
    struct schan *ch = userdata;
    size_t tl = term != NULL ? strlen(term) : 0;
    bool term_ok = tl > 0 && tl < sizeof ch->term;

    (void)session;
    (void)channel;
    (void)pxwidth;
    (void)pwheight;
    if (ch->state != CH_NEW || ch->pty) {
        return 1;
    }
    for (size_t i = 0; term_ok && i < tl; i++) {
        term_ok = term[i] > ' ' && term[i] < 0x7f;
    }
    (void)snprintf(ch->term, sizeof ch->term, "%s", term_ok ? term : "xterm-256color");
    ch->cols = width >= 1 && width <= 65535 ? (uint32_t)width : 80;
    ch->rows = height >= 1 && height <= 65535 ? (uint32_t)height : 24;
    ch->pty = true;
    return 0;
}

static int cb_shell(ssh_session session, ssh_channel channel, void *userdata)
{
    struct schan *ch = userdata;

    (void)session;
    (void)channel;
    if (ch->state != CH_NEW) {
        return 1;
    }
    ch->shell = true;
    ch->state = CH_WANT;
    return 0;
}

static int cb_exec(ssh_session session, ssh_channel channel, const char *command, void *userdata)
{
    struct schan *ch = userdata;
    size_t n = command != NULL ? strlen(command) : 0;

    (void)session;
    (void)channel;
    if (ch->state != CH_NEW || n == 0 || n > SSH_CMD_MAX) {
        return 1;
    }
    ch->command = strdup(command);
    if (ch->command == NULL) {
        return 1;
    }
    ch->state = CH_WANT;
    return 0;
}

/* LANG, LC_* and TERM, as OpenSSH's default AcceptEnv (plus TERM) does. */
static bool env_allowed(const char *name)
{
    size_t n = strlen(name);

    if (strcmp(name, "LANG") != 0 && strcmp(name, "TERM") != 0 && strncmp(name, "LC_", 3) != 0) {
        return false;
    }
    return n > 0 && n <= 64 && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == n;
}

static int cb_env(ssh_session session, ssh_channel channel, const char *name, const char *value,
                  void *userdata)
{
    struct schan *ch = userdata;
    size_t len;
    char *kv;

    (void)session;
    (void)channel;
    if (ch->state != CH_NEW || ch->nenv >= SSH_ENV_MAX || name == NULL || value == NULL ||
        !env_allowed(name)) {
        return 1;
    }
    len = strlen(name) + 1 + strlen(value);
    if (len > SSH_ENV_LEN) {
        return 1;
    }
    kv = malloc(len + 1);
    if (kv == NULL) {
        return 1;
    }
    (void)snprintf(kv, len + 1, "%s=%s", name, value);
    ch->env[ch->nenv++] = kv;
    return 0;
}

static int cb_subsystem(ssh_session session, ssh_channel channel, const char *subsystem,
                        void *userdata)
{
    struct schan *ch = userdata;

    (void)session;
    (void)channel;
    if (ch->sc != NULL) {
        gw_log("ssh %s: subsystem %.64s refused (not supported)", ch->sc->peer,
               subsystem != NULL ? subsystem : "?");
    }
    return 1;
}

static int cb_window(ssh_session session, ssh_channel channel, int width, int height, int pxwidth,
                     int pwheight, void *userdata)
{
    struct schan *ch = userdata;
    struct sconn *sc = ch->sc;

    (void)session;
    (void)channel;
    (void)pxwidth;
    (void)pwheight;
    if (!ch->pty || width < 1 || width > 65535 || height < 1 || height > 65535) {
        return 1;
    }
    ch->cols = (uint32_t)width;
    ch->rows = (uint32_t)height;
    if (ch->state == CH_RUNNING && !ch->exited && sc != NULL && sc->c != NULL) {
        (void)sbx_proc_resize(sc->c, ch->proc, ch->rows, ch->cols, NULL, NULL, &ignored);
    }
    return 0;
}

static void cb_signal(ssh_session session, ssh_channel channel, const char *signal, void *userdata)
{
    struct schan *ch = userdata;
    struct sconn *sc = ch->sc;
    int signo = signal != NULL && strlen(signal) <= 16 ? sbx_signal_parse(signal) : -1;

    (void)session;
    (void)channel;
    if (signo > 0 && ch->state == CH_RUNNING && !ch->exited && sc != NULL && sc->c != NULL) {
        (void)sbx_proc_kill(sc->c, ch->proc, signo, false, NULL, NULL, &ignored);
    }
}

/* --- libssh's output buffer (see the top) --------------------------------------------------- */

static uint64_t conn_queued_total(const struct sconn *sc)
{
    return sc->raw_cnt.out_bytes + SSH_PKT_OVERHEAD * sc->raw_cnt.out_packets;
}

/* libssh's output buffer is empty: the accounting starts over. */
static void conn_out_empty(struct sconn *sc)
{
    sc->unsent = 0;
    sc->base_queued = conn_queued_total(sc);
    sc->base_sent = sc->sock_cnt.out_bytes;
}

/* At most how many bytes libssh's output buffer holds (0 when it is empty). */
static uint64_t conn_backlog(struct sconn *sc)
{
    uint64_t queued, sent;

    if (sc->sess == NULL || !(ssh_get_status(sc->sess) & SSH_WRITE_PENDING)) {
        if (sc->sess != NULL) {
            conn_out_empty(sc);
        }
        return 0;
    }
    queued = conn_queued_total(sc) - sc->base_queued;
    sent = sc->sock_cnt.out_bytes - sc->base_sent;
    return queued > sent ? queued - sent : 0;
}

static int cb_wontblock(ssh_session session, ssh_channel channel, uint32_t bytes, void *userdata)
{
    struct schan *ch = userdata;

    (void)session;
    (void)channel;
    (void)bytes;
    if (ch->sc != NULL) {
        conn_out_empty(ch->sc); /* libssh's socket buffer is empty */
    }
    return 0;
}

/* --- the agent side of a channel ------------------------------------------------------------ */

static void chan_fail(struct schan *ch, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void chan_fail(struct schan *ch, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(ch->fail, sizeof ch->fail, fmt, ap);
    va_end(ap);
    ch->state = CH_RUNNING; /* finished by the pump: message, exit status 1 */
    ch->exited = true;
    ch->exit.exited = true;
    ch->exit.code = 1;
}

static void on_stream(struct gw_link_stream *st, const struct sbx_event *ev)
{
    struct cstream *cs = container_of(st, struct cstream, st);
    struct schan *ch = cs->ch;
    struct sconn *sc = ch->sc;
    struct obuf *q = cs->which == 1 ? &ch->outq : cs->which == 2 ? &ch->errq : NULL;
    bool *open = cs->which == 1 ? &ch->out_open : cs->which == 2 ? &ch->err_open : &ch->in_open;

    if (sc == NULL) {
        return; /* orphaned: on_spawn cleans up */
    }
    switch (ev->kind) {
    case SBX_EV_DATA:
        if (q == NULL) {
            break;
        }
        if (ch->client_closed || ch->ch == NULL) {
            (void)sbx_conn_consumed(sc->c, ev->stream, ev->len, &ignored);
        } else if (obuf_size(q) + ev->len > SSH_PEND_MAX || obuf_add(q, ev->data, ev->len) < 0) {
            gw_log("ssh %s: output of process %u beyond %u bytes: stream cancelled", sc->peer,
                   ch->proc, SSH_PEND_MAX);
            (void)sbx_conn_stream_set_user(sc->c, ev->stream, NULL);
            (void)sbx_conn_cancel(sc->c, ev->stream, &ignored);
            *open = false;
            cs->attached = false;
        }
        break;
    case SBX_EV_END:
    case SBX_EV_CANCEL:
        *open = false;
        cs->attached = false; /* the core has forgotten the stream */
        break;
    default: /* CREDIT: the pump feeds more */
        break;
    }
    conn_pump(sc);
}

static void on_spawn(struct gw_link_req *r, const struct sbx_event *ev)
{
    struct schan *ch = container_of(r, struct schan, spawn_req);
    struct sconn *sc = ch->sc;
    struct sbx_conn *c = ev->error == NULL && ch->link != NULL ? gw_link_conn(ch->link) : NULL;

    if (ev->error == NULL) {
        const struct sbx_spawn_result *sp = &ev->r.spawn;

        ch->proc = sp->id;
        ch->in = sp->in;
        ch->out = sp->out;
        ch->err = sp->err;
        ch->in_open = sp->in != 0;
        ch->out_open = sp->out != 0;
        ch->err_open = sp->err != 0;
        ch->state = CH_RUNNING;
    }
    if (sc == NULL) {
        /* The connection went away meanwhile: kill what started. */
        struct gw_ssh *srv = ch->srv;

        chan_drop_process(ch, c);
        chan_free(ch);
        srv->orphans--;
        srv_maybe_free(srv);
        return;
    }
    if (ev->error != NULL) {
        chan_fail(ch, "sbx-gateway: cannot start the %s: %s: %s", ch->shell ? "shell" : "command",
                  ev->error->code, ev->error->msg);
    } else if (c != NULL) {
        ch->s_out.attached =
            ch->out_open && sbx_conn_stream_set_user(c, ch->out, &ch->s_out.st) == 0;
        ch->s_err.attached =
            ch->err_open && sbx_conn_stream_set_user(c, ch->err, &ch->s_err.st) == 0;
        ch->s_in.attached = ch->in_open && sbx_conn_stream_set_user(c, ch->in, &ch->s_in.st) == 0;
        /* The size may have changed while proc.spawn was on its way. */
        if (ch->pty) {
            (void)sbx_proc_resize(c, ch->proc, ch->rows, ch->cols, NULL, NULL, &ignored);
        }
    }
    conn_pump(sc);
}

static void chan_spawn(struct schan *ch)
{
    struct sconn *sc = ch->sc;
    struct gw *g = sc->srv->g;
    struct sbx_spawn_params sp;
    struct sbx_pty_params pty;
    struct sbx_err err;
    const char *argv[] = { "/bin/sh", "-c", SSH_SHELL_SCRIPT, "sbx-ssh", NULL };

    memset(&sp, 0, sizeof sp);
    if (ch->shell) {
        sp.argv = argv;
    } else {
        sp.command = ch->command;
    }
    ch->env[ch->nenv] = NULL;
    sp.env = ch->nenv > 0 ? (const char *const *)ch->env : NULL;
    sp.cwd = g->opt.cwd;
    sp.user = g->opt.user;
    sp.stdin_mode = SBX_STDIO_PIPE;
    sp.stdout_mode = SBX_STDIO_PIPE;
    sp.stderr_mode = SBX_STDIO_PIPE;
    sp.has_drain_ms = true;
    sp.drain_ms = SSH_DRAIN_MS;
    sp.tag = "sbx-gateway ssh";
    if (ch->pty) {
        memset(&pty, 0, sizeof pty);
        pty.rows = ch->rows;
        pty.cols = ch->cols;
        pty.term = ch->term;
        sp.pty = &pty;
    }
    ch->spawn_req.fn = on_spawn;
    ch->link = sc->link;
    (void)snprintf(ch->sandbox, sizeof ch->sandbox, "%s", sc->sandbox);
    if (sbx_proc_spawn(sc->c, &sp, &ch->spawn_req, NULL, &err) < 0) {
        chan_fail(ch, "sbx-gateway: cannot start the %s: %s: %s", ch->shell ? "shell" : "command",
                  err.code, err.msg);
        return;
    }
    ch->state = CH_SPAWNING;
}

/* --- relaying ------------------------------------------------------------------------------- */

/* Write what @q holds into the channel as its window and SSH_OUT_HIGH allow; acknowledge it to
 * the agent. Returns -1 when the channel cannot be written any more. */
static int chan_flush_q(struct schan *ch, struct obuf *q, bool is_err, uint32_t stream)
{
    struct sconn *sc = ch->sc;

    while (obuf_size(q) > 0) {
        uint32_t win;
        size_t n = obuf_size(q), busy;
        uint64_t counted;
        int w;

        if (ch->ch == NULL || ch->client_closed) {
            if (sc->c != NULL) {
                (void)sbx_conn_consumed(sc->c, stream, n, &ignored);
            }
            obuf_drop(q, n);
            return -1;
        }
        win = ssh_channel_window_size(ch->ch);
        if (sc->rekey_held > 0 && sc->raw_cnt.out_bytes - sc->rekey_mark >= sc->rekey_held) {
            sc->rekey_held = 0; /* libssh has sent on (at least as much as it held) */
        }
        busy = sc->unsent;
        if (busy < SSH_OUT_HIGH) {
            uint64_t b = conn_backlog(sc);

            busy = b > busy ? (b < SSH_OUT_HIGH ? (size_t)b : SSH_OUT_HIGH) : busy;
        }
        if (win == 0 || busy >= SSH_OUT_HIGH || sc->rekey_held > 0) {
            return 0;
        }
        n = n < win ? n : win;
        n = n < SSH_WRITE_CHUNK ? n : SSH_WRITE_CHUNK;
        n = n < SSH_OUT_HIGH - busy ? n : SSH_OUT_HIGH - busy;
        counted = sc->raw_cnt.out_bytes;
        w = is_err ? ssh_channel_write_stderr(ch->ch, q->p + q->off, (uint32_t)n)
                   : ssh_channel_write(ch->ch, q->p + q->off, (uint32_t)n);
        if (w < 0) {
            ch->client_closed = true; /* closed, or the session failed (the pump sees that) */
            continue;
        }
        if (w == 0) {
            return 0;
        }
        if (sc->raw_cnt.out_bytes - counted < (uint64_t)w) {
            /* Not all of it went into libssh's buffer: held back for a key re-exchange. */
            sc->rekey_held += (uint64_t)w;
            sc->rekey_mark = sc->raw_cnt.out_bytes;
        }
        obuf_drop(q, (size_t)w);
        sc->unsent += (size_t)w;
        if (sc->c != NULL) {
            (void)sbx_conn_consumed(sc->c, stream, (size_t)w, &ignored);
        }
    }
    return 0;
}

/* Take client bytes libssh holds for @ch once the agent's stdin queue is down to SSH_AGENT_LOW:
 * up to SSH_AGENT_HIGH of them. */
static void chan_take_input(struct schan *ch)
{
    static uint8_t buf[SSH_READ_CHUNK];
    struct sconn *sc = ch->sc;
    size_t budget = SIZE_MAX;

    if (ch->in_held > 0 && ch->in_open && sc->c != NULL) {
        if (sbx_conn_queued(sc->c, ch->in) > SSH_AGENT_LOW) {
            return;
        }
        budget = in_room(sc->c, ch->in);
        if (budget == 0) {
            return; /* the link's queues are full: held in libssh until they drain */
        }
    }
    while (ch->in_held > 0 && ch->ch != NULL && budget > 0) {
        size_t want = ch->in_held < sizeof buf ? ch->in_held : sizeof buf;
        bool drop = !ch->in_open || sc->c == NULL;
        int n;

        want = want < budget ? want : budget;
        n = ssh_channel_read_nonblocking(ch->ch, buf, (uint32_t)want, 0);
        if (n <= 0) {
            ch->in_held = 0; /* nothing buffered after all (or the channel failed) */
            return;
        }
        ch->in_held = (size_t)n < ch->in_held ? ch->in_held - (size_t)n : 0;
        budget -= drop ? 0 : (size_t)n;
        if (!drop && sbx_conn_write(sc->c, ch->in, buf, (size_t)n, &ignored) < 0) {
            ch->in_open = false; /* the process closed its stdin: the rest is dropped */
        }
    }
}

/* Tell the client how the process ended, then close the channel. */
static void chan_finish(struct schan *ch)
{
    struct sconn *sc = ch->sc;

    if (ch->ch != NULL && !ch->client_closed) {
        if (ch->fail[0] != '\0') {
            char line[sizeof ch->fail + 4];
            int n = snprintf(line, sizeof line, "%s\r\n", ch->fail);
            uint32_t win = ssh_channel_window_size(ch->ch);

            if (n > 0 && win > 0) {
                (void)ssh_channel_write_stderr(ch->ch, line, (uint32_t)n < win ? (uint32_t)n : win);
            }
        }
        if (ch->exit.exited) {
            (void)ssh_channel_request_send_exit_status(ch->ch, ch->exit.code);
        } else {
            char buf[16];
            const char *name = sbx_signal_name(ch->exit.signo, buf, sizeof buf);

            name = name != NULL && strncmp(name, "SIG", 3) == 0 ? name + 3 : "KILL";
            (void)ssh_channel_request_send_exit_signal(ch->ch, name, ch->exit.core ? 1 : 0, "", "");
        }
        (void)ssh_channel_send_eof(ch->ch);
        (void)ssh_channel_close(ch->ch);
    }
    ch->state = CH_DONE;
    chan_release(ch, !sc->dead);
}

/* Everything that can move on @ch. */
static void chan_pump(struct schan *ch)
{
    struct sconn *sc = ch->sc;

    if (ch->state == CH_WANT && sc->c != NULL && !ch->client_closed) {
        chan_spawn(ch);
    }
    if (ch->client_closed) {
        chan_release(ch, !sc->dead);
        return;
    }
    if (ch->state != CH_RUNNING) {
        return;
    }
    chan_take_input(ch);
    if (ch->client_eof && ch->in_held == 0 && ch->in_open && sc->c != NULL) {
        (void)sbx_conn_end(sc->c, ch->in, NULL, &ignored);
        ch->in_open = false;
    }
    (void)chan_flush_q(ch, &ch->outq, false, ch->out);
    (void)chan_flush_q(ch, &ch->errq, true, ch->err);
    if (ch->client_closed) {
        chan_release(ch, !sc->dead);
        return;
    }
    if (ch->exited && !ch->out_open && !ch->err_open && obuf_size(&ch->outq) == 0 &&
        obuf_size(&ch->errq) == 0) {
        chan_finish(ch);
    }
}

/* --- connections ---------------------------------------------------------------------------- */

static void conn_update_poll(struct sconn *sc)
{
    int want = UV_READABLE;

    if (!sc->poll_open || sc->torn) {
        return;
    }
    sc->held = conn_backlog(sc) >= SSH_BACKLOG_HIGH;
    if (sc->held) {
        /* Only libssh's writes (a wake-up on writability lets it read one chunk, too). */
        want = UV_WRITABLE;
    } else if (ssh_get_poll_flags(sc->sess) & SSH_WRITE_PENDING) {
        want |= UV_WRITABLE;
    }
    if (want != sc->poll_events) {
        sc->poll_events = want;
        (void)uv_poll_start(&sc->poll, want, conn_on_poll);
    }
}

static bool conn_ssh_closed(struct sconn *sc)
{
    return (ssh_get_status(sc->sess) & (SSH_CLOSED | SSH_CLOSED_ERROR)) != 0;
}

/* Close the connection once what libssh has queued is out (or SSH_CLOSE_MS has passed): conn_pump
 * ends it then, and the disconnect message goes out after the rest. */
static void conn_closing(struct sconn *sc)
{
    if (sc->state != SC_CLOSING) {
        sc->state = SC_CLOSING;
        if (sc->timer_open) {
            (void)uv_timer_stop(&sc->timer);
            (void)uv_timer_start(&sc->timer, conn_on_timer, SSH_CLOSE_MS, 0);
        }
    }
}

/* Close every channel with @msg on its stderr, then the connection once the bytes are out. */
static void conn_close_with(struct sconn *sc, const char *msg)
{
    for (struct schan *ch = sc->chans, *next; ch != NULL; ch = next) {
        next = ch->next;
        if (ch->ch != NULL && !ch->client_closed && ch->state != CH_DONE) {
            char line[400];
            int n = snprintf(line, sizeof line, "\r\nsbx-gateway: %s\r\n", msg);
            uint32_t win = ssh_channel_window_size(ch->ch);

            if (n > 0 && win > 0) {
                (void)ssh_channel_write_stderr(ch->ch, line, (uint32_t)n < win ? (uint32_t)n : win);
            }
            (void)ssh_channel_send_eof(ch->ch);
            (void)ssh_channel_close(ch->ch);
        }
        chan_release(ch, true);
    }
    conn_closing(sc);
}

/* --ssh-idle-timeout. */
static int64_t conn_idle_ms(const struct sconn *sc)
{
    return sc->srv->g->opt.ssh_idle_ms > 0 ? sc->srv->g->opt.ssh_idle_ms : GW_SSH_IDLE_MS;
}

/* An authenticated connection on which no channel has a process (asked for, starting or running)
 * is unused: --ssh-idle-timeout after it became so, conn_on_timer closes it. A channel whose
 * process runs keeps the connection however quiet both are: that process is the user's work (a
 * shell at its prompt, a long build), and a client that is gone is found by TCP keepalive. */
static void conn_idle(struct sconn *sc)
{
    bool used = false;

    if (sc->state != SC_OPEN || !sc->timer_open) {
        return;
    }
    for (struct schan *ch = sc->chans; ch != NULL && !used; ch = ch->next) {
        used = ch->state != CH_NEW;
    }
    if (used) {
        (void)uv_timer_stop(&sc->timer);
    } else if (!uv_is_active((uv_handle_t *)&sc->timer)) {
        (void)uv_timer_start(&sc->timer, conn_on_timer, (uint64_t)conn_idle_ms(sc), 0);
    }
}

/* The work of a connection, once libssh is off the stack. Idempotent. */
static void conn_pump(struct sconn *sc)
{
    if (sc->depth > 0 || sc->torn) {
        return;
    }
    sc->depth++;
    if (!sc->dead && conn_ssh_closed(sc)) {
        sc->dead = true;
    }
    if (!sc->dead) {
        (void)conn_backlog(sc); /* starts over when the buffer is empty (no channel may be told) */
    }
    if (!sc->dead && sc->why[0] != '\0' && sc->state != SC_CLOSING) {
        conn_close_with(sc, sc->why);
    }
    if (!sc->dead && sc->state == SC_OPEN) {
        for (struct schan *ch = sc->chans, *next; ch != NULL && !sc->dead; ch = next) {
            next = ch->next; /* only @ch itself may go */
            chan_pump(ch);
        }
    }
    if (!sc->dead) {
        conn_free_sinks(sc, false);
    }
    if (!sc->dead && conn_backlog(sc) > SSH_BACKLOG_MAX) {
        if (!sc->srv->g->opt.quiet) {
            gw_log("ssh %s: the client does not read what it is sent (%u bytes waiting): "
                   "disconnected",
                   sc->peer, SSH_BACKLOG_MAX);
        }
        sc->dead = true;
    }
    if (!sc->dead && conn_ssh_closed(sc)) {
        sc->dead = true;
    }
    if (!sc->dead && sc->state == SC_CLOSING && sc->chans == NULL &&
        !(ssh_get_poll_flags(sc->sess) & SSH_WRITE_PENDING)) {
        sc->dead = true; /* everything we had to say went out */
    }
    if (!sc->dead) {
        conn_idle(sc);
    }
    if (sc->link != NULL && sc->lu.joined) {
        gw_link_flush(sc->link);
    }
    sc->depth--;
    if (sc->dead) {
        conn_teardown(sc);
    } else {
        conn_update_poll(sc);
    }
}

static void srv_maybe_free(struct gw_ssh *srv)
{
    if (!srv->stopping || srv->lpoll_open || srv->conns != NULL || srv->reapers != NULL ||
        srv->orphans > 0) {
        return;
    }
    while (srv->grants != NULL) {
        struct grant *gr = srv->grants;

        srv->grants = gr->next;
        free(gr);
    }
    if (srv->bind != NULL) {
        ssh_bind_free(srv->bind);
    }
    free(srv);
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct sconn *sc = h->data;
    struct gw_ssh *srv = sc->srv;

    if (h == (uv_handle_t *)&sc->poll) {
        sc->poll_open = false;
    } else {
        sc->timer_open = false;
    }
    if (sc->poll_open || sc->timer_open) {
        return;
    }
    if (sc->prev != NULL) {
        sc->prev->next = sc->next;
    } else {
        srv->conns = sc->next;
    }
    if (sc->next != NULL) {
        sc->next->prev = sc->prev;
    }
    srv->nconns--;
    free(sc);
    srv_maybe_free(srv);
}

/* End the connection: channels released (processes killed), the link left, libssh freed, the
 * handles closed (the struct goes with them). Only at depth 0. */
static void conn_teardown(struct sconn *sc)
{
    bool alive;

    if (sc->torn || sc->depth > 0) {
        return;
    }
    sc->torn = true;
    alive = !conn_ssh_closed(sc);
    while (sc->chans != NULL) {
        chan_release(sc->chans, false);
    }
    if (sc->link != NULL && sc->lu.joined) {
        gw_link_flush(sc->link); /* the kills */
        gw_link_leave(sc->link, &sc->lu);
    }
    sc->link = NULL;
    sc->c = NULL;
    if (sc->poll_open) {
        uv_close((uv_handle_t *)&sc->poll, conn_handle_closed); /* before libssh closes the fd */
    }
    if (sc->timer_open) {
        uv_close((uv_handle_t *)&sc->timer, conn_handle_closed);
    }
    if (sc->event != NULL) {
        (void)ssh_event_remove_session(sc->event, sc->sess);
        ssh_event_free(sc->event);
        sc->event = NULL;
    }
    if (alive) {
        ssh_disconnect(sc->sess); /* best effort: its message may not make it out */
    }
    ssh_free(sc->sess); /* closes the socket */
    sc->sess = NULL;
    conn_free_sinks(sc, true);
}

static void conn_on_poll(uv_poll_t *h, int status, int events)
{
    struct sconn *sc = h->data;

    (void)events;
    sc->depth++;
    if (status < 0) {
        sc->dead = true;
    } else if (sc->state == SC_KEX) {
        int rc = ssh_handle_key_exchange(sc->sess);

        if (rc == SSH_OK && sc->state == SC_KEX) {
            sc->state = SC_AUTH;
        } else if (rc == SSH_ERROR) {
            if (!sc->srv->g->opt.quiet) {
                gw_log("ssh %s: key exchange failed: %s", sc->peer, ssh_get_error(sc->sess));
            }
            sc->dead = true;
        }
    } else if (ssh_event_dopoll(sc->event, 0) == SSH_ERROR && conn_ssh_closed(sc)) {
        sc->dead = true;
    }
    sc->depth--;
    conn_pump(sc);
}

static void conn_on_timer(uv_timer_t *t)
{
    struct sconn *sc = t->data;

    if (sc->state == SC_OPEN) {
        char d[32], msg[128];

        /* conn_idle armed it: no process has run on the connection since. */
        gw_duration_text(conn_idle_ms(sc), d, sizeof d);
        (void)snprintf(msg, sizeof msg, "sbx-gateway: no session on this connection for %s: closed",
                       d);
        (void)ssh_session_set_disconnect_message(sc->sess, msg);
        if (!sc->srv->g->opt.quiet) {
            gw_log("ssh %s: no session for %s (--ssh-idle-timeout): closed", sc->peer, d);
        }
    } else if (!sc->srv->g->opt.quiet) {
        gw_log("ssh %s: %s", sc->peer,
               sc->state == SC_CLOSING ? "closed (its last bytes did not go out in time)"
                                       : "no authentication in time: closed");
    }
    sc->dead = true;
    conn_pump(sc);
}

/* --- the link ------------------------------------------------------------------------------- */

static void lu_up(struct gw_link_user *u, struct sbx_conn *c)
{
    struct sconn *sc = container_of(u, struct sconn, lu);

    sc->c = c;
    conn_pump(sc);
}

static void lu_down(struct gw_link_user *u, const char *why)
{
    struct sconn *sc = container_of(u, struct sconn, lu);
    struct gw_sandbox *sb = gw_sandbox_find(sc->srv->g, sc->sandbox);

    sc->c = NULL;
    sc->link = NULL;
    for (struct schan *ch = sc->chans; ch != NULL; ch = ch->next) {
        ch->link = NULL;
        ch->in_open = ch->out_open = ch->err_open = false;
    }
    if (sb != NULL && sb->state != GW_SB_READY) {
        (void)snprintf(sc->why, sizeof sc->why, "the sandbox stopped: %s",
                       sb->why[0] != '\0' ? sb->why : why);
    } else {
        (void)snprintf(sc->why, sizeof sc->why, "lost the sandbox's agent: %s", why);
    }
    conn_pump(sc);
}

static void lu_event(struct gw_link_user *u, const struct sbx_event *ev)
{
    struct sconn *sc = container_of(u, struct sconn, lu);

    if (ev->kind != SBX_EV_EXIT || ev->rec != SBX_REC_EXIT) {
        return;
    }
    for (struct schan *ch = sc->chans; ch != NULL; ch = ch->next) {
        if (ch->state == CH_RUNNING && !ch->exited && ch->proc == ev->r.exit.id) {
            ch->exited = true;
            ch->exit = ev->r.exit;
            ch->in_open = false; /* the agent cancelled it before proc.exit (§9.2) */
            conn_pump(sc);
            return;
        }
    }
}

static void lu_drained(struct gw_link_user *u)
{
    conn_pump(container_of(u, struct sconn, lu));
}

/* --- authentication and channel opens -------------------------------------------------------- */

static int auth_deny(struct sconn *sc)
{
    if (++sc->auth_tries >= SSH_AUTH_TRIES) {
        sc->dead = true;
    }
    return SSH_AUTH_DENIED;
}

/* Whether @sb may have one more authenticated connection: at most SSH_CONNS_PER_SB of the
 * SSH_CONNS_MAX, so that the holders of one sandbox's user names (a credential meant to be
 * shared) cannot take every connection from the others. Beyond, @sc is told why as it is
 * disconnected (authenticated first, so that only a valid name learns of it). */
static bool conn_share(struct sconn *sc, const struct gw_sandbox *sb)
{
    char msg[200];
    unsigned n = 0;

    for (struct sconn *o = sc->srv->conns; o != NULL; o = o->next) {
        n += !o->torn && strcmp(o->sandbox, sb->id) == 0;
    }
    if (n < SSH_CONNS_PER_SB) {
        return true;
    }
    (void)snprintf(msg, sizeof msg,
                   "sbx-gateway: sandbox %s has %u SSH connections already (its share of the "
                   "gateway's %u): refusing more",
                   sb->id, SSH_CONNS_PER_SB, SSH_CONNS_MAX);
    (void)ssh_session_set_disconnect_message(sc->sess, msg);
    if (!sc->srv->g->opt.quiet) {
        gw_log("ssh %s: %s has %u connections already (its share of %u): refused", sc->peer, sb->id,
               SSH_CONNS_PER_SB, SSH_CONNS_MAX);
    }
    return false;
}

static int cb_auth_none(ssh_session session, const char *user, void *userdata)
{
    struct sconn *sc = userdata;
    struct gw_ssh *srv = sc->srv;
    struct grant *gr;
    struct gw_sandbox *sb;
    struct gw_link *l;
    char why[256];

    (void)session;
    /* libssh dispatches authentication only after the key exchange (a pipelining client's request
     * may come in the same batch as the key exchange's end: SC_KEX still). */
    if ((sc->state != SC_KEX && sc->state != SC_AUTH) || user == NULL) {
        return auth_deny(sc);
    }
    gr = grant_find(srv, user);
    sb = gr != NULL ? gw_sandbox_find(srv->g, gr->sandbox) : NULL;
    if (sb == NULL || sb->state != GW_SB_READY) {
        if (!srv->g->opt.quiet) {
            gw_log("ssh %s: authentication refused%s", sc->peer,
                   gr != NULL ? " (its sandbox is not running)" : "");
        }
        return auth_deny(sc);
    }
    if (!conn_share(sc, sb)) {
        /* Disconnected with conn_share's message once this answer is out: ending the connection
         * at once could lose the message behind it. */
        conn_closing(sc);
        return SSH_AUTH_SUCCESS;
    }
    l = gw_link_get(sb, why, sizeof why);
    if (l == NULL) {
        gw_log("ssh %s: %s: %s", sc->peer, sb->id, why);
        return auth_deny(sc);
    }
    (void)snprintf(sc->sandbox, sizeof sc->sandbox, "%s", sb->id);
    sc->state = SC_OPEN;
    (void)uv_timer_stop(&sc->timer);
    sc->link = l;
    sc->lu.up = lu_up;
    sc->lu.down = lu_down;
    sc->lu.event = lu_event;
    sc->lu.drained = lu_drained;
    gw_link_join(l, &sc->lu); /* `up` may come at once: it only records (depth > 0) */
    if (!srv->g->opt.quiet) {
        gw_log("ssh %s: session on %s", sc->peer, sb->id);
    }
    return SSH_AUTH_SUCCESS;
}

static int cb_auth_password(ssh_session session, const char *user, const char *password,
                            void *userdata)
{
    (void)session;
    (void)user;
    (void)password;
    return auth_deny(userdata);
}

static int cb_auth_pubkey(ssh_session session, const char *user, struct ssh_key_struct *pubkey,
                          char signature_state, void *userdata)
{
    (void)session;
    (void)user;
    (void)pubkey;
    (void)signature_state;
    return auth_deny(userdata);
}

static ssh_channel cb_channel_open(ssh_session session, void *userdata)
{
    struct sconn *sc = userdata;
    struct schan *ch;

    if (sc->state != SC_OPEN || sc->dead || sc->why[0] != '\0' ||
        sc->nchans + sc->nsinks >= SSH_CHANS_MAX) {
        return NULL;
    }
    ch = calloc(1, sizeof(*ch));
    if (ch == NULL) {
        return NULL;
    }
    ch->ch = ssh_channel_new(session);
    if (ch->ch == NULL) {
        free(ch);
        return NULL;
    }
    ch->sc = sc;
    ch->srv = sc->srv;
    ch->s_in = (struct cstream){ { on_stream }, ch, 0, false };
    ch->s_out = (struct cstream){ { on_stream }, ch, 1, false };
    ch->s_err = (struct cstream){ { on_stream }, ch, 2, false };
    ch->cb.userdata = ch;
    ch->cb.channel_data_function = cb_data;
    ch->cb.channel_eof_function = cb_eof;
    ch->cb.channel_close_function = cb_close;
    ch->cb.channel_signal_function = cb_signal;
    ch->cb.channel_pty_request_function = cb_pty;
    ch->cb.channel_shell_request_function = cb_shell;
    ch->cb.channel_pty_window_change_function = cb_window;
    ch->cb.channel_exec_request_function = cb_exec;
    ch->cb.channel_env_request_function = cb_env;
    ch->cb.channel_subsystem_request_function = cb_subsystem;
    ch->cb.channel_write_wontblock_function = cb_wontblock;
    ssh_callbacks_init(&ch->cb);
    if (ssh_set_channel_callbacks(ch->ch, &ch->cb) != SSH_OK) {
        ssh_channel_free(ch->ch);
        free(ch);
        return NULL;
    }
    ch->next = sc->chans;
    sc->chans = ch;
    sc->nchans++;
    return ch->ch;
}

/* --- accepting ------------------------------------------------------------------------------ */

/* TCP keepalive on a client's socket: after --ssh-keepalive without a byte from the client, a
 * probe every --ssh-keepalive; SSH_KA_PROBES unanswered ones (or a reset: a peer that rebooted)
 * end the connection with an error on the socket. Without it a client that vanished without a
 * FIN (its host or network gone) would hold its connection, and its processes, for as long as
 * nothing is written to it, since an idle session sends nothing. (Not uv_tcp_keepalive: the fd is
 * libssh's, watched by a uv_poll_t.) Best effort: a socket that refuses keeps working without. */
static void conn_keepalive(struct gw_ssh *srv, int fd, const char *peer)
{
    int64_t ms = srv->g->opt.ssh_ka_ms > 0 ? srv->g->opt.ssh_ka_ms : GW_SSH_KA_MS;
    int one = 1, probes = SSH_KA_PROBES;
    int secs = ms / 1000 < 1 ? 1 : ms / 1000 > SSH_KA_MAX_S ? SSH_KA_MAX_S : (int)(ms / 1000);

    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof secs) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) < 0) {
        gw_log("ssh %s: TCP keepalive: %s", peer, strerror(errno));
    }
}

static void conn_new(struct gw_ssh *srv, int fd, const struct sockaddr_storage *ss)
{
    struct sconn *sc = calloc(1, sizeof(*sc));
    char addr[64] = "?";
    int one = 1;

    if (sc == NULL) {
        (void)close(fd);
        return;
    }
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)ss;

        (void)uv_ip4_name(in, addr, sizeof addr);
        (void)snprintf(sc->peer, sizeof sc->peer, "%s:%u", addr, ntohs(in->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)ss;

        (void)uv_ip6_name(in6, addr, sizeof addr);
        (void)snprintf(sc->peer, sizeof sc->peer, "[%s]:%u", addr, ntohs(in6->sin6_port));
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_keepalive(srv, fd, sc->peer);
    sc->srv = srv;
    sc->sess = ssh_new();
    if (sc->sess == NULL) {
        (void)close(fd);
        free(sc);
        return;
    }
    ssh_set_counters(sc->sess, &sc->sock_cnt, &sc->raw_cnt); /* they live as long as @sc */
    if (ssh_bind_accept_fd(srv->bind, sc->sess, fd) != SSH_OK) {
        gw_log("ssh %s: %s", sc->peer, ssh_get_error(srv->bind));
        if (ssh_get_fd(sc->sess) != fd) {
            (void)close(fd);
        }
        ssh_free(sc->sess);
        free(sc);
        return;
    }
    ssh_set_blocking(sc->sess, 0);
    ssh_set_auth_methods(sc->sess, SSH_AUTH_METHOD_PUBLICKEY);
    sc->scb.userdata = sc;
    sc->scb.auth_none_function = cb_auth_none;
    sc->scb.auth_password_function = cb_auth_password;
    sc->scb.auth_pubkey_function = cb_auth_pubkey;
    sc->scb.channel_open_request_session_function = cb_channel_open;
    ssh_callbacks_init(&sc->scb);
    /* The first call sends our banner and gives the session the poll context that
     * ssh_event_add_session moves into our event. */
    if (ssh_set_server_callbacks(sc->sess, &sc->scb) != SSH_OK ||
        ssh_handle_key_exchange(sc->sess) == SSH_ERROR || (sc->event = ssh_event_new()) == NULL ||
        ssh_event_add_session(sc->event, sc->sess) != SSH_OK) {
        gw_log("ssh %s: cannot set the session up", sc->peer);
        if (sc->event != NULL) {
            ssh_event_free(sc->event);
        }
        ssh_free(sc->sess);
        free(sc);
        return;
    }
    (void)uv_poll_init(srv->g->loop, &sc->poll, fd);
    (void)uv_timer_init(srv->g->loop, &sc->timer);
    sc->poll.data = sc;
    sc->timer.data = sc;
    sc->poll_open = sc->timer_open = true;
    sc->state = SC_KEX;
    sc->next = srv->conns;
    if (sc->next != NULL) {
        sc->next->prev = sc;
    }
    srv->conns = sc;
    srv->nconns++;
    (void)uv_timer_start(&sc->timer, conn_on_timer, SSH_AUTH_MS, 0);
    conn_pump(sc);
}

/* At the connection cap: end the oldest live connection that has not authenticated (the list is
 * newest first), which makes room for one more. False when every one has. Connections torn down
 * (their socket closed already) still count until their handles have closed: at most
 * SSH_ACCEPT_BATCH more than the cap at once. */
static bool conn_evict_preauth(struct gw_ssh *srv)
{
    struct sconn *victim = NULL;

    for (struct sconn *sc = srv->conns; sc != NULL; sc = sc->next) {
        if (!sc->torn && (sc->state == SC_KEX || sc->state == SC_AUTH)) {
            victim = sc;
        }
    }
    if (victim == NULL) {
        return false;
    }
    if (!srv->g->opt.quiet) {
        gw_log("ssh %s: closed to make room (%u connections, not authenticated)", victim->peer,
               SSH_CONNS_MAX);
    }
    victim->dead = true;
    conn_pump(victim);
    return true;
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    struct gw_ssh *srv = h->data;

    (void)events;
    if (status < 0) {
        return;
    }
    for (int i = 0; i < SSH_ACCEPT_BATCH && !srv->stopping; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(srv->lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED) {
                gw_log("ssh: accept: %s", strerror(errno));
            }
            return;
        }
        if (srv->nconns >= SSH_CONNS_MAX && conn_evict_preauth(srv)) {
            srv->full_logged = false;
            conn_new(srv, fd, &ss);
            continue;
        }
        if (srv->nconns >= SSH_CONNS_MAX) {
            if (!srv->full_logged) {
                gw_log("ssh: %u connections already: refusing more", SSH_CONNS_MAX);
                srv->full_logged = true;
            }
            (void)close(fd);
            continue;
        }
        srv->full_logged = false;
        conn_new(srv, fd, &ss);
    }
}

/* --- the host key --------------------------------------------------------------------------- */

static ssh_key host_key(struct gw *g, char *why, size_t whylen)
{
    char path[PATH_MAX];
    ssh_key key = NULL;
    char *b64 = NULL;
    size_t len = 0;

    (void)snprintf(path, sizeof path, "%s/ssh_host_ed25519_key", g->opt.data_dir);
    if (gw_file_read(path, 64u << 10, &b64, &len) == 0) {
        int rc = ssh_pki_import_privkey_base64(b64, NULL, NULL, NULL, &key);

        free(b64);
        if (rc != SSH_OK || ssh_key_type(key) != SSH_KEYTYPE_ED25519) {
            ssh_key_free(key);
            (void)snprintf(why, whylen, "--ssh-listen: %s is not an Ed25519 private key", path);
            return NULL;
        }
        return key;
    }
    if (errno != ENOENT) {
        (void)snprintf(why, whylen, "--ssh-listen: %s: %s", path, strerror(errno));
        return NULL;
    }
    if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK ||
        ssh_pki_export_privkey_base64(key, NULL, NULL, NULL, &b64) != SSH_OK) {
        ssh_key_free(key);
        (void)snprintf(why, whylen, "--ssh-listen: cannot generate an Ed25519 host key");
        return NULL;
    }
    if (gw_file_write_atomic(path, b64, strlen(b64), 0600) < 0) {
        (void)snprintf(why, whylen, "--ssh-listen: writing %s: %s", path, strerror(errno));
        ssh_string_free_char(b64);
        ssh_key_free(key);
        return NULL;
    }
    ssh_string_free_char(b64);
    gw_log("ssh: generated the host key %s", path);
    return key;
}

/* --- start, stop ---------------------------------------------------------------------------- */

/* "HOST:PORT" or "[V6]:PORT" with a numeric host. 0, or -1. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, char *host, size_t hostlen)
{
    const char *colon, *hs = s, *he;
    char *end;
    long port;

    if (s[0] == '[') {
        he = strchr(s, ']');
        if (he == NULL || he[1] != ':') {
            return -1;
        }
        hs = s + 1;
        colon = he + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            return -1;
        }
        he = colon;
    }
    if ((size_t)(he - hs) == 0 || (size_t)(he - hs) >= hostlen) {
        return -1;
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 0 || port > 65535) {
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) {
        return 0;
    }
    return -1;
}

int gw_ssh_start(struct gw *g, char *why, size_t whylen)
{
    struct sockaddr_storage ss;
    struct gw_ssh *srv;
    ssh_key key;
    bool no = false;
    int verbosity = SSH_LOG_NOLOG;
    int one = 1;
    socklen_t sl = sizeof ss;

    if (g->opt.ssh_listen == NULL) {
        return 0;
    }
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        (void)snprintf(why, whylen, "--ssh-listen: out of memory");
        return -1;
    }
    srv->g = g;
    srv->lfd = -1;
    if (parse_listen(g->opt.ssh_listen, &ss, srv->host, sizeof srv->host) < 0) {
        (void)snprintf(why, whylen, "--ssh-listen %s: not HOST:PORT with a numeric host",
                       g->opt.ssh_listen);
        free(srv);
        return -1;
    }
    srv->wildcard = strcmp(srv->host, "0.0.0.0") == 0 || strcmp(srv->host, "::") == 0;
    (void)snprintf(srv->path, sizeof srv->path, "%s/ssh.json", g->opt.data_dir);
    if (ssh_init() != SSH_OK || (key = host_key(g, why, whylen)) == NULL) {
        if (why[0] == '\0') {
            (void)snprintf(why, whylen, "--ssh-listen: libssh failed to initialise");
        }
        free(srv);
        return -1;
    }
    srv->bind = ssh_bind_new();
    if (srv->bind == NULL ||
        ssh_bind_options_set(srv->bind, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no) != SSH_OK ||
        ssh_bind_options_set(srv->bind, SSH_BIND_OPTIONS_LOG_VERBOSITY, &verbosity) != SSH_OK ||
        ssh_bind_options_set(srv->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
        (void)snprintf(why, whylen, "--ssh-listen: %s",
                       srv->bind != NULL ? ssh_get_error(srv->bind) : "out of memory");
        if (srv->bind != NULL) {
            ssh_bind_free(srv->bind);
        }
        ssh_key_free(key);
        free(srv);
        return -1;
    }
    /* The bind owns @key from here. */
    srv->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (srv->lfd < 0 || setsockopt(srv->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(srv->lfd, (struct sockaddr *)&ss,
             ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) <
            0 ||
        listen(srv->lfd, 128) < 0 || getsockname(srv->lfd, (struct sockaddr *)&ss, &sl) < 0) {
        (void)snprintf(why, whylen, "--ssh-listen %s: %s", g->opt.ssh_listen, strerror(errno));
        if (srv->lfd >= 0) {
            (void)close(srv->lfd);
        }
        ssh_bind_free(srv->bind);
        free(srv);
        return -1;
    }
    srv->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                              : ((struct sockaddr_in6 *)&ss)->sin6_port);
    if (uv_poll_init(g->loop, &srv->lpoll, srv->lfd) < 0) {
        (void)snprintf(why, whylen, "--ssh-listen: cannot poll the socket");
        (void)close(srv->lfd);
        ssh_bind_free(srv->bind);
        free(srv);
        return -1;
    }
    srv->lpoll.data = srv;
    srv->lpoll_open = true;
    (void)uv_poll_start(&srv->lpoll, UV_READABLE, on_listen);
    grants_load(srv);
    g->ssh = srv;
    gw_log("ssh: listening on %s%s%s:%d", strchr(srv->host, ':') ? "[" : "", srv->host,
           strchr(srv->host, ':') ? "]" : "", srv->port);
    return 0;
}

static void lpoll_closed(uv_handle_t *h)
{
    struct gw_ssh *srv = h->data;

    (void)close(srv->lfd);
    srv->lfd = -1;
    srv->lpoll_open = false;
    srv_maybe_free(srv);
}

void gw_ssh_stop(struct gw *g)
{
    struct gw_ssh *srv = g->ssh;

    if (srv == NULL) {
        return;
    }
    g->ssh = NULL;
    srv->stopping = true;
    if (srv->lpoll_open) {
        uv_close((uv_handle_t *)&srv->lpoll, lpoll_closed);
    }
    /* Pending SIGKILLs go now: the sandboxes' links close right after. */
    while (srv->reapers != NULL) {
        struct reaper *r = srv->reapers;

        kill_now(srv, r->sandbox, r->proc, SIGKILL);
        reaper_done(r);
    }
    for (struct sconn *sc = srv->conns; sc != NULL; sc = sc->next) {
        if (!sc->torn) {
            (void)snprintf(sc->why, sizeof sc->why, "sbx-gateway is stopping");
            sc->dead = true; /* processes get SIGHUP and (stopping) SIGKILL at once */
            conn_pump(sc);
        }
    }
    srv_maybe_free(srv);
}

/* --- POST /api/v3/sandbox/<id>/expose/ssh ----------------------------------------------------- */

/* The host part of a Host header when it is a plain name or address, into @out. */
static bool host_from_header(const char *h, char *out, size_t outlen)
{
    const char *s = h, *e;
    size_t n;

    if (h == NULL) {
        return false;
    }
    if (s[0] == '[') {
        s++;
        e = strchr(s, ']');
    } else {
        e = strchr(s, ':');
        e = e != NULL ? e : s + strlen(s);
    }
    if (e == NULL || e == s || (size_t)(e - s) >= outlen || (size_t)(e - s) > 253) {
        return false;
    }
    n = (size_t)(e - s);
    for (size_t i = 0; i < n; i++) {
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:", s[i])) {
            return false;
        }
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

void gw_rest_expose_ssh(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                        struct gw_sandbox *sb)
{
    struct gw_ssh *srv = g->ssh;
    struct grant *gr;
    char host[256];
    unsigned mine = 0;

    if (srv == NULL) {
        gw_rest_error(hc, 503, "SSH_NOT_ENABLED",
                      "SSH access is not enabled on this gateway (start sbx-gateway with "
                      "--ssh-listen HOST:PORT)");
        return;
    }
    if (req->body_len > 0) {
        json_t *body = json_loadb(req->body, req->body_len, 0, NULL);
        bool ok = json_is_object(body);

        json_decref(body);
        if (!ok) {
            gw_rest_error(hc, 400, "INVALID_REQUEST", "the body must be a JSON object ({})");
            return;
        }
    }
    if (sb->state != GW_SB_BOOTING && sb->state != GW_SB_READY) {
        gw_rest_error(hc, 404, "SANDBOX_NOT_FOUND", "the sandbox is not running");
        return;
    }
    (void)grants_prune(srv);
    for (gr = srv->grants; gr != NULL; gr = gr->next) {
        mine += strcmp(gr->sandbox, sb->id) == 0;
    }
    if (mine >= SSH_GRANTS_PER_SB) {
        grants_drop_oldest(srv, sb->id);
    }
    if (srv->ngrants >= SSH_GRANTS_MAX) {
        grants_drop_oldest(srv, NULL);
    }
    gr = calloc(1, sizeof(*gr));
    if (gr == NULL || gw_random_chars(gr->user, SSH_USER_LEN, SSH_USER_ALPHABET) < 0) {
        free(gr);
        gw_rest_error(hc, 500, "INTERNAL_SERVER_ERROR", "cannot mint a user name");
        return;
    }
    (void)snprintf(gr->sandbox, sizeof gr->sandbox, "%s", sb->id);
    gr->created_ms = gw_now_ms();
    gr->next = srv->grants;
    srv->grants = gr;
    srv->ngrants++;
    grants_save(srv);
    if (!srv->wildcard || !host_from_header(gw_http_header(req, "host"), host, sizeof host)) {
        (void)snprintf(host, sizeof host, "%s", srv->wildcard ? "127.0.0.1" : srv->host);
    }
    gw_http_respond_json(
        hc, 200, NULL,
        json_pack("{s:s, s:s, s:i}", "hostname", host, "username", gr->user, "port", srv->port));
}
