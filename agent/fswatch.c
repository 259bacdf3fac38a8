/*
 * fs.watch / fs.unwatch and fs.event notifications (PROTOCOL.md §17.6). One inotify instance per
 * connection, read through a uv_poll handle. A watch owns one binding (wd, relative directory)
 * per watched directory; the kernel hands out one wd per inode and instance, so bindings of
 * different watches may share a wd and every event goes to each of them. While the connection is
 * congested the agent stops reading inotify (a timer looks again), so events wait in the kernel
 * queue and an overflow there is reported as the "overflow" event; the agent queues nothing.
 * A watch adds its kernel watches (also those on directories made later) as the identity of the
 * request that made it (§17.1), so inotify's read permission check is that user's.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include "conn.h"
#include "fs.h"
#include "path.h"

#define FW_HASH         256u
#define FW_MASK         (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO)
#define FW_ROOT_MASK    (FW_MASK | IN_DELETE_SELF | IN_MOVE_SELF)
#define FW_RECHECK_MS   20u
#define FW_READS_PER_CB 16
/* Directories one recursive watch binds at most: each one added is a walk step on the loop, and
 * a workload moving a tree it made in and out of the watched one would otherwise stall every
 * connection for as long as its tree is big (and use up the guest's inotify watches). */
#define FW_DIRS_MAX 16384u

struct fw_watch;

/* One watched directory (or file) of a watch: its wd and its path relative to the watch root. */
struct fw_ref {
    struct agent_link wlink; /* in watch->refs */
    struct fw_ref *hnext;    /* hash chain by wd */
    struct fw_watch *w;
    int wd;
    char *rel; /* "" for the root */
};

struct fw_watch {
    struct agent_link link; /* in fw->watches */
    struct agent_fswatch *fw;
    uint32_t id;
    bool recursive;
    struct fw_ref *root;
    struct agent_link refs;
    size_t nrefs;           /* bindings in refs, at most FW_DIRS_MAX */
    char *path;             /* as the client gave it: events are reported under it */
    char *abs;              /* absolute, for adding subdirectories */
    struct agent_ident who; /* whom its kernel watches are added as */
    /* the last event sent, to merge consecutive identical ones of one read */
    char last_kind;
    char *last_path;
    uint64_t last_batch;
};

static void fw_gone(struct agent_conn_ref *r);

struct agent_fswatch {
    struct agent_conn *conn;
    struct agent_conn_ref ref; /* ends the watches when the connection closes */
    int fd;
    uv_poll_t poll;
    uv_timer_t timer;
    unsigned handles; /* still to be closed */
    bool polling;
    struct agent_link watches;
    uint32_t next_id;
    uint64_t batch; /* counts reads of the inotify fd */
    struct fw_ref *hash[FW_HASH];
    /* a IN_MOVED_FROM waiting for its IN_MOVED_TO */
    uint32_t cookie;
    int from_wd;
    char from_name[NAME_MAX + 1];
    bool from_dir, have_from;
};

/* --- bindings ------------------------------------------------------------------------------ */

static struct fw_ref **hash_slot(struct agent_fswatch *fw, int wd)
{
    return &fw->hash[(unsigned)wd % FW_HASH];
}

static bool wd_shared(struct agent_fswatch *fw, int wd, const struct fw_ref *except)
{
    for (struct fw_ref *r = *hash_slot(fw, wd); r != NULL; r = r->hnext) {
        if (r->wd == wd && r != except) {
            return true;
        }
    }
    return false;
}

/* Drop a binding; the kernel watch goes only when no other binding uses the wd. */
static void ref_free(struct agent_fswatch *fw, struct fw_ref *r, bool rm)
{
    struct fw_ref **pp = hash_slot(fw, r->wd);

    while (*pp != r) {
        pp = &(*pp)->hnext;
    }
    *pp = r->hnext;
    if (rm && !wd_shared(fw, r->wd, NULL)) {
        (void)inotify_rm_watch(fw->fd, r->wd); /* EINVAL when the kernel already dropped it */
    }
    agent_list_del(&r->wlink);
    r->w->nrefs--;
    if (r->w->root == r) {
        r->w->root = NULL;
    }
    free(r->rel);
    free(r);
}

/* inotify_add_watch of @abs pinned first without magic links (agent/path.h), then watched by
 * the pin's /proc/self/fd name (which inotify follows: the pin honoured IN_DONT_FOLLOW already);
 * by @abs itself without /proc. */
static int watch_pinned(int ifd, const char *abs, uint32_t mask)
{
    char proc[AGENT_PATH_PROC_BUF];
    int pin = agent_path_pin(abs, (mask & IN_DONT_FOLLOW) == 0), wd, e;

    if (pin < 0) {
        return -1;
    }
    wd = agent_path_proc_ok()
             ? inotify_add_watch(ifd, agent_path_proc(pin, proc), mask & ~(uint32_t)IN_DONT_FOLLOW)
             : inotify_add_watch(ifd, abs, mask);
    e = errno;
    (void)close(pin); /* an O_PATH fd: nothing to report */
    errno = e;
    return wd;
}

/* Watch @abs (absolute path of @rel under the watch) and bind it. Returns the binding or NULL
 * with errno set. */
static struct fw_ref *ref_add(struct fw_watch *w, const char *abs, const char *rel, uint32_t mask)
{
    struct agent_fswatch *fw = w->fw;
    struct fw_ref *r;
    int wd;

    if (w->nrefs >= FW_DIRS_MAX) {
        errno = EMLINK; /* told apart by the callers: LIMIT, or "overflow" */
        return NULL;
    }
    wd = watch_pinned(fw->fd, abs, mask);
    if (wd < 0) {
        return NULL;
    }
    for (r = *hash_slot(fw, wd); r != NULL; r = r->hnext) {
        if (r->wd == wd && r->w == w) {
            return r; /* the same directory reached twice (a bind mount): one binding */
        }
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL || (r->rel = strdup(rel)) == NULL) {
        free(r);
        if (!wd_shared(fw, wd, NULL)) {
            (void)inotify_rm_watch(fw->fd, wd);
        }
        errno = ENOMEM;
        return NULL;
    }
    r->w = w;
    r->wd = wd;
    r->hnext = *hash_slot(fw, wd);
    *hash_slot(fw, wd) = r;
    agent_list_add_tail(&w->refs, &r->wlink);
    w->nrefs++;
    return r;
}

/* Bind every directory below @abs (relative path @rel), not following symlinks. Best effort:
 * returns -1 with errno for the first failure that is not a vanished directory. */
static int add_subdirs(struct fw_watch *w, const char *abs, const char *rel, unsigned depth)
{
    _cleanup_closedir_ DIR *d = NULL;
    struct dirent *de;
    int ret = 0, fd;

    if (depth >= SBX_FS_WALK_OPEN_MAX) {
        return 0;
    }
    /* opendir(3) says nothing of close-on-exec: open the fd ourselves, O_CLOEXEC. */
    fd = agent_path_open(AT_FDCWD, abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        int e = errno;
        if (fd >= 0) {
            (void)close(fd);
        }
        errno = e;
        return e == ENOENT || e == ENOTDIR ? 0 : -1;
    }
    while ((de = agent_path_readdir(d)) != NULL) {
        char sub[AGENT_FS_PATH_BUF], subrel[AGENT_FS_PATH_BUF];
        struct stat st;
        bool isdir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            isdir =
                fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
        }
        if (!isdir || snprintf(sub, sizeof(sub), "%s/%s", abs, de->d_name) >= (int)sizeof(sub) ||
            snprintf(subrel, sizeof(subrel), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >=
                (int)sizeof(subrel)) {
            continue;
        }
        if (ref_add(w, sub, subrel, FW_MASK | IN_ONLYDIR | IN_DONT_FOLLOW) == NULL) {
            if (errno == ENOENT || errno == ENOTDIR) {
                continue;
            }
            ret = -1;
            break;
        }
        if (add_subdirs(w, sub, subrel, depth + 1) < 0) {
            ret = -1;
            break;
        }
    }
    return ret;
}

static void watch_end(struct fw_watch *w)
{
    struct agent_fswatch *fw = w->fw;

    while (!agent_list_empty(&w->refs)) {
        ref_free(fw, agent_container_of(w->refs.next, struct fw_ref, wlink), true);
    }
    agent_list_del(&w->link);
    free(w->path);
    free(w->abs);
    free(w->last_path);
    free(w);
}

/* --- events -------------------------------------------------------------------------------- */

/* "path/rel/name" for a binding; empty parts are left out. */
static void event_path(char *out, size_t outsz, const char *base, const char *rel, const char *name)
{
    size_t n = (size_t)snprintf(out, outsz, "%s", base);

    if (rel[0] != '\0' && n < outsz) {
        n += (size_t)snprintf(out + n, outsz - n, "%s%s", n > 0 && out[n - 1] == '/' ? "" : "/",
                              rel);
    }
    if (name != NULL && name[0] != '\0' && n < outsz) {
        (void)snprintf(out + n, outsz - n, "%s%s", n > 0 && out[n - 1] == '/' ? "" : "/", name);
    }
}

static void send_event(struct fw_watch *w, const char *kind, const char *path, const char *from)
{
    struct agent_conn *c = w->fw->conn;
    msgpack_packer *pk;

    if (from == NULL && path != NULL && w->last_batch == w->fw->batch && w->last_kind == kind[0] &&
        w->last_path != NULL && strcmp(w->last_path, path) == 0) {
        return; /* merged with the identical event just before */
    }
    free(w->last_path);
    w->last_path = from == NULL && path != NULL ? strdup(path) : NULL;
    w->last_kind = kind[0];
    w->last_batch = w->fw->batch;
    pk = agent_conn_begin(c);
    sbx_pack_notify_head(pk, "fs.event");
    (void)msgpack_pack_map(pk, 3 + (from != NULL));
    sbx_pack_kv_u64(pk, "watch", w->id);
    sbx_pack_kv_str(pk, "kind", kind);
    sbx_pack_cstr(pk, "path");
    if (path != NULL) {
        sbx_pack_bstr(pk, path, strlen(path));
    } else {
        (void)msgpack_pack_nil(pk);
    }
    if (from != NULL) {
        sbx_pack_cstr(pk, "from");
        sbx_pack_bstr(pk, from, strlen(from));
    }
    agent_conn_send(c);
}

/* A directory appeared at @rel/@name under binding @r: watch it and what is below it. */
static void watch_new_dir(struct fw_ref *r, const char *name)
{
    struct fw_watch *w = r->w;
    char abs[AGENT_FS_PATH_BUF], rel[AGENT_FS_PATH_BUF];
    struct agent_ident_scope sc = { 0 };
    bool missing;

    event_path(abs, sizeof(abs), w->abs, r->rel, name);
    if (snprintf(rel, sizeof(rel), "%s%s%s", r->rel, r->rel[0] ? "/" : "", name) >=
        (int)sizeof(rel)) {
        return;
    }
    if (agent_ident_enter(&w->who, &sc) < 0) {
        send_event(w, "overflow", NULL, NULL); /* this directory's events will be missing */
        return;
    }
    if (ref_add(w, abs, rel, FW_MASK | IN_ONLYDIR | IN_DONT_FOLLOW) == NULL) {
        missing = errno == ENOENT || errno == ENOTDIR;
        agent_ident_leave(&sc);
        if (!missing) {
            send_event(w, "overflow", NULL, NULL); /* this directory's events will be missing */
        }
        return;
    }
    missing = add_subdirs(w, abs, rel, 0) < 0;
    agent_ident_leave(&sc);
    if (missing) {
        send_event(w, "overflow", NULL, NULL);
    }
}

/* Bindings of @w at or below @rel: renamed to @to, or dropped when @to is NULL. */
static void move_refs(struct fw_watch *w, const char *rel, const char *to)
{
    size_t n = strlen(rel);
    struct agent_link *l, *next;

    for (l = w->refs.next; l != &w->refs; l = next) {
        struct fw_ref *r = agent_container_of(l, struct fw_ref, wlink);
        next = l->next;
        if (r == w->root || strncmp(r->rel, rel, n) != 0 ||
            (r->rel[n] != '\0' && r->rel[n] != '/')) {
            continue;
        }
        if (to == NULL) {
            ref_free(w->fw, r, true);
        } else {
            char *nr = malloc(strlen(to) + strlen(r->rel + n) + 1);
            if (nr != NULL) {
                (void)sprintf(nr, "%s%s", to, r->rel + n);
                free(r->rel);
                r->rel = nr;
            }
        }
    }
}

static void rel_join(char *out, size_t outsz, const char *rel, const char *name)
{
    (void)snprintf(out, outsz, "%s%s%s", rel, rel[0] ? "/" : "", name);
}

/* The pending IN_MOVED_FROM had no partner in the tree: it moved out, report "remove". */
static void flush_from(struct agent_fswatch *fw)
{
    struct fw_ref *r;

    if (!fw->have_from) {
        return;
    }
    fw->have_from = false;
    for (r = *hash_slot(fw, fw->from_wd); r != NULL; r = r->hnext) {
        char path[2 * AGENT_FS_PATH_BUF], rel[AGENT_FS_PATH_BUF];
        if (r->wd != fw->from_wd) {
            continue;
        }
        event_path(path, sizeof(path), r->w->path, r->rel, fw->from_name);
        if (fw->from_dir && r->w->recursive) {
            rel_join(rel, sizeof(rel), r->rel, fw->from_name);
            /* Frees the bindings of r->w below r, never r itself; one of them may be r's next
             * in this slot (another wd of the same hash), so next is read after this. */
            move_refs(r->w, rel, NULL);
        }
        send_event(r->w, "remove", path, NULL);
    }
}

static void handle_event(struct agent_fswatch *fw, const struct inotify_event *ev)
{
    const char *name = ev->len > 0 ? ev->name : "";
    bool isdir = (ev->mask & IN_ISDIR) != 0;
    struct fw_ref *r, *next;

    if (ev->mask & IN_Q_OVERFLOW) {
        struct agent_link *l;
        flush_from(fw);
        for (l = fw->watches.next; l != &fw->watches; l = l->next) {
            send_event(agent_container_of(l, struct fw_watch, link), "overflow", NULL, NULL);
        }
        return;
    }
    if (fw->have_from && !((ev->mask & IN_MOVED_TO) && ev->cookie == fw->cookie)) {
        flush_from(fw);
    }
    if (ev->mask & IN_MOVED_FROM) {
        fw->have_from = true;
        fw->cookie = ev->cookie;
        fw->from_wd = ev->wd;
        fw->from_dir = isdir;
        (void)snprintf(fw->from_name, sizeof(fw->from_name), "%s", name);
        return;
    }
    for (r = *hash_slot(fw, ev->wd); r != NULL; r = next) {
        struct fw_watch *w = r->w;
        char path[2 * AGENT_FS_PATH_BUF];
        next = r->hnext;
        if (r->wd != ev->wd) {
            continue;
        }
        event_path(path, sizeof(path), w->path, r->rel, name);
        if (ev->mask & IN_MOVED_TO) {
            struct fw_ref *fr = NULL;
            if (fw->have_from) {
                for (fr = *hash_slot(fw, fw->from_wd); fr != NULL; fr = fr->hnext) {
                    if (fr->wd == fw->from_wd && fr->w == w) {
                        break;
                    }
                }
            }
            if (fr != NULL) {
                char from[2 * AGENT_FS_PATH_BUF], orel[AGENT_FS_PATH_BUF], nrel[AGENT_FS_PATH_BUF];
                event_path(from, sizeof(from), w->path, fr->rel, fw->from_name);
                if (isdir && w->recursive) {
                    rel_join(orel, sizeof(orel), fr->rel, fw->from_name);
                    rel_join(nrel, sizeof(nrel), r->rel, name);
                    move_refs(w, orel, nrel);
                }
                send_event(w, "rename", path, from);
            } else {
                send_event(w, "create", path, NULL);
                if (isdir && w->recursive) {
                    watch_new_dir(r, name);
                }
            }
        } else if (ev->mask & IN_CREATE) {
            send_event(w, "create", path, NULL);
            if (isdir && w->recursive) {
                watch_new_dir(r, name);
            }
        } else if (ev->mask & IN_DELETE) {
            send_event(w, "remove", path, NULL);
        } else if (ev->mask & (IN_MODIFY | IN_ATTRIB)) {
            send_event(w, "modify", path, NULL);
        } else if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED)) {
            if (r != w->root) {
                if (ev->mask & IN_IGNORED) {
                    ref_free(fw, r, false); /* a subdirectory went away; its parent said so */
                }
                continue;
            }
            /* The watched path itself is gone: say so once and end the watch. */
            send_event(w, "remove", w->path, NULL);
            watch_end(w); /* one binding per (wd, watch): next belongs to another watch */
        }
    }
    if (fw->have_from && (ev->mask & IN_MOVED_TO) && ev->cookie == fw->cookie) {
        fw->have_from = false;
    }
}

static void fw_poll_cb(uv_poll_t *h, int status, int events);

static void fw_timer_cb(uv_timer_t *h)
{
    struct agent_fswatch *fw = h->data;

    fw_poll_cb(&fw->poll, 0, UV_READABLE);
}

static void fw_poll_cb(uv_poll_t *h, int status, int events)
{
    struct agent_fswatch *fw = h->data;
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));

    for (int i = 0; i < FW_READS_PER_CB; i++) {
        ssize_t n;
        if (fw->conn->queued > SBX_CONN_DATA_HIGH || fw->conn->closing) {
            /* Congested: leave the events in the kernel queue and look again soon. */
            if (fw->polling) {
                (void)uv_poll_stop(&fw->poll);
                fw->polling = false;
            }
            (void)uv_timer_start(&fw->timer, fw_timer_cb, FW_RECHECK_MS, 0);
            return;
        }
        n = read(fw->fd, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        fw->batch++;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(fw, ev);
            p += sizeof(*ev) + ev->len;
        }
        flush_from(fw); /* a move's two halves arrive in one read */
    }
    if (!fw->polling) {
        fw->polling = uv_poll_start(&fw->poll, UV_READABLE, fw_poll_cb) == 0;
    }
}

/* --- requests ------------------------------------------------------------------------------ */

static struct agent_fswatch *fw_get(struct agent_conn *c, struct sbx_err *err)
{
    struct agent_fswatch *fw = c->fw;

    if (fw != NULL) {
        return fw;
    }
    fw = calloc(1, sizeof(*fw));
    if (fw == NULL) {
        sbx_err_oom(err);
        return NULL;
    }
    fw->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fw->fd < 0) {
        sbx_err_sys(err, errno, NULL, "inotify_init1");
        free(fw);
        return NULL;
    }
    if (uv_poll_init(c->a->loop, &fw->poll, fw->fd) != 0) {
        (void)close(fw->fd);
        free(fw);
        sbx_err_set(err, SBX_E_INTERNAL, "cannot poll the inotify descriptor");
        return NULL;
    }
    (void)uv_timer_init(c->a->loop, &fw->timer);
    fw->poll.data = fw;
    fw->timer.data = fw;
    fw->handles = 2;
    fw->conn = c;
    fw->next_id = 1;
    agent_list_init(&fw->watches);
    fw->polling = uv_poll_start(&fw->poll, UV_READABLE, fw_poll_cb) == 0;
    c->fw = fw;
    agent_conn_ref_add(c, &fw->ref, fw_gone);
    return fw;
}

static unsigned fw_count(struct agent_fswatch *fw)
{
    unsigned n = 0;

    for (struct agent_link *l = fw->watches.next; l != &fw->watches; l = l->next) {
        n++;
    }
    return n;
}

int agent_fs_watch(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char abs[AGENT_FS_PATH_BUF], given[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct agent_ident who;
    struct agent_fswatch *fw;
    struct fw_watch *w;
    bool recursive = false;
    struct stat st;
    msgpack_packer *pk;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, abs, err) < 0 ||
        sbx_param_bstr(m->params, "path", SBX_REQUIRED, given, sizeof(given), err) < 0 ||
        sbx_param_bool(m->params, "recursive", SBX_OPTIONAL, &recursive, err) < 0 ||
        agent_ident_param(c->a, m->params, &who, err) < 0 || (fw = fw_get(c, err)) == NULL) {
        return -1;
    }
    if (fw_count(fw) >= SBX_FS_WATCHES_MAX) {
        sbx_err_limit(err, "max_watches", SBX_FS_WATCHES_MAX,
                      "too many watches on this connection (cap %u)", SBX_FS_WATCHES_MAX);
        return -1;
    }
    if (agent_ident_enter_err(&who, &sc, err) < 0) {
        return -1;
    }
    if (agent_path_stat(abs, true, &st) < 0) {
        agent_fs_err(err, errno, "watch", abs);
        return -1;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL || (w->path = strdup(given)) == NULL || (w->abs = strdup(abs)) == NULL) {
        if (w != NULL) {
            free(w->path);
        }
        free(w);
        return sbx_err_oom(err);
    }
    w->fw = fw;
    w->who = who;
    w->recursive = recursive && S_ISDIR(st.st_mode);
    agent_list_init(&w->refs);
    agent_list_add_tail(&fw->watches, &w->link);
    w->root = ref_add(w, abs, "", FW_ROOT_MASK);
    if (w->root == NULL || (w->recursive && add_subdirs(w, abs, "", 0) < 0)) {
        if (errno == EMLINK) {
            sbx_err_limit(err, "watch_dirs", FW_DIRS_MAX,
                          "a recursive watch takes at most %u directories", FW_DIRS_MAX);
            sbx_err_set_path(err, abs);
        } else {
            agent_fs_err(err, errno, "watch", abs);
        }
        watch_end(w);
        return -1;
    }
    agent_ident_leave(&sc);
    w->id = fw->next_id++;
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "watch", w->id);
    agent_conn_send(c);
    return AGENT_REPLIED;
}

int agent_fs_unwatch(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fswatch *fw = c->fw;
    uint64_t id;

    if (sbx_param_u64(m->params, "watch", SBX_REQUIRED, 0, UINT32_MAX, &id, err) < 0) {
        return -1;
    }
    if (fw == NULL || id == 0 || id >= fw->next_id) {
        sbx_err_set(err, SBX_E_NOT_FOUND, "no watch %llu on this connection",
                    (unsigned long long)id);
        return -1;
    }
    for (struct agent_link *l = fw->watches.next; l != &fw->watches; l = l->next) {
        struct fw_watch *w = agent_container_of(l, struct fw_watch, link);
        if (w->id == id) {
            watch_end(w);
            break;
        }
    }
    agent_conn_reply_empty(c, m->id); /* an ended watch is not an error */
    return AGENT_REPLIED;
}

static void fw_close_cb(uv_handle_t *h)
{
    struct agent_fswatch *fw = h->data;

    if (--fw->handles == 0) {
        (void)close(fw->fd); /* nothing was written through it */
        free(fw);
    }
}

/* The connection closed: end its watches and release its inotify instance. */
static void fw_gone(struct agent_conn_ref *r)
{
    struct agent_fswatch *fw = agent_container_of(r, struct agent_fswatch, ref);
    struct agent_conn *c = fw->conn;

    while (!agent_list_empty(&fw->watches)) {
        watch_end(agent_container_of(fw->watches.next, struct fw_watch, link));
    }
    c->fw = NULL;
    fw->conn = NULL;
    uv_close((uv_handle_t *)&fw->poll, fw_close_cb);
    uv_close((uv_handle_t *)&fw->timer, fw_close_cb);
}
