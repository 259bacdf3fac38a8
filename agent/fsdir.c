/*
 * fs.readdir's cursors (PROTOCOL.md §17.3): an open directory stream per cursor that the client
 * pages through, per connection, closed at its end, when idle too long or with the connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsconn.h"
#include "path.h"
#include "sbx/schema.h"

/* A readdir cursor: an open directory stream the client pages through. */
struct fs_cursor {
    struct agent_link link;
    uint32_t id;
    DIR *dir;
    uint64_t used_ns;
    struct agent_ident who; /* the identity that opened it: later pages act as it too */
};

static void cursor_free(struct agent_fs *fs, struct fs_cursor *cur)
{
    agent_list_del(&cur->link);
    fs->ncursors--;
    (void)closedir(cur->dir);
    free(cur);
}

static void cursors_expire(struct agent_fs *fs, uint64_t now)
{
    struct agent_link *l, *next;

    for (l = fs->cursors.next; l != &fs->cursors; l = next) {
        struct fs_cursor *cur = agent_container_of(l, struct fs_cursor, link);
        next = l->next;
        if (now - cur->used_ns > (uint64_t)SBX_FS_CURSOR_IDLE_MS * 1000000) {
            cursor_free(fs, cur);
        }
    }
}

static struct fs_cursor *cursor_find(struct agent_fs *fs, const char *s, size_t n)
{
    char buf[16];
    char *end;
    unsigned long id;

    if (n < 2 || n >= sizeof(buf) || s[0] != 'c') {
        return NULL;
    }
    memcpy(buf, s + 1, n - 1);
    buf[n - 1] = '\0';
    errno = 0;
    id = strtoul(buf, &end, 10);
    if (errno != 0 || *end != '\0') {
        return NULL;
    }
    for (struct agent_link *l = fs->cursors.next; l != &fs->cursors; l = l->next) {
        struct fs_cursor *cur = agent_container_of(l, struct fs_cursor, link);
        if (cur->id == id) {
            return cur;
        }
    }
    return NULL;
}

/* One collected entry: type name, then the name and its NUL, packed into a growing buffer. */
struct dirbuf {
    char *p;
    size_t len, cap;
    uint32_t n;
};

static int dirbuf_add(struct dirbuf *b, const char *type, const char *name)
{
    size_t tl = strlen(type) + 1, nl = strlen(name) + 1;

    if (b->len + tl + nl > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16384;
        char *np;
        while (cap < b->len + tl + nl) {
            cap *= 2;
        }
        np = realloc(b->p, cap);
        if (np == NULL) {
            return -1;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, type, tl);
    memcpy(b->p + b->len + tl, name, nl);
    b->len += tl + nl;
    b->n++;
    return 0;
}

int agent_fs_readdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fs *fs = agent_fs_state(c);
    char path[AGENT_FS_PATH_BUF];
    struct fs_cursor *cur = NULL;
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct agent_ident who;
    struct dirbuf b = { 0 };
    uint64_t limit = SBX_FS_READDIR_DEFAULT, now = agent_now_ns();
    const char *cs;
    size_t cn;
    bool more = false;
    msgpack_packer *pk;
    int r;

    if (fs == NULL) {
        return sbx_err_oom(err);
    }
    cursors_expire(fs, now);
    if (sbx_param_u64(m->params, "limit", SBX_OPTIONAL, 1, SBX_FS_READDIR_MAX, &limit, err) < 0) {
        return -1;
    }
    r = sbx_param_str(m->params, "cursor", SBX_OPTIONAL, 15, &cs, &cn, err);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        cur = cursor_find(fs, cs, cn);
        if (cur == NULL) {
            sbx_err_set(err, SBX_E_NOT_FOUND, "no such readdir cursor (expired or finished)");
            return -1;
        }
        if (agent_ident_enter_err(&cur->who, &sc, err) < 0) {
            return -1;
        }
    } else {
        int fd;
        DIR *d;
        if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
            agent_ident_param(c->a, m->params, &who, err) < 0) {
            return -1;
        }
        if (fs->ncursors >= SBX_FS_CURSORS_MAX) {
            sbx_err_limit(err, "max_cursors", SBX_FS_CURSORS_MAX,
                          "too many open readdir cursors (cap %u)", SBX_FS_CURSORS_MAX);
            return -1;
        }
        if (agent_ident_enter_err(&who, &sc, err) < 0) {
            return -1;
        }
        fd = agent_path_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        if (fd < 0) {
            return agent_fs_err(err, errno, "opendir", path);
        }
        d = fdopendir(fd);
        cur = d != NULL ? calloc(1, sizeof(*cur)) : NULL;
        if (cur == NULL) {
            if (d != NULL) {
                (void)closedir(d);
            } else {
                (void)close(fd);
            }
            return sbx_err_oom(err);
        }
        cur->dir = d;
        cur->who = who;
        cur->id = fs->next_cursor++;
        agent_list_add_tail(&fs->cursors, &cur->link);
        fs->ncursors++;
    }
    cur->used_ns = now;
    for (;;) {
        struct dirent *de;
        const char *type;
        if (b.n >= limit) {
            more = true;
            break;
        }
        de = agent_path_readdir(cur->dir);
        if (de == NULL) {
            if (errno != 0) {
                agent_fs_err(err, errno, "readdir", r == 0 ? "(cursor)" : path);
                free(b.p);
                cursor_free(fs, cur);
                return -1;
            }
            break;
        }
        type = agent_fs_dtype_name(de->d_type);
        if (type == NULL) {
            struct stat st;
            type = fstatat(dirfd(cur->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
                       ? agent_fs_type_name(st.st_mode)
                       : "unknown"; /* vanished meanwhile */
        }
        if (dirbuf_add(&b, type, de->d_name) < 0) {
            free(b.p);
            cursor_free(fs, cur);
            return sbx_err_oom(err);
        }
    }
    agent_ident_leave(&sc);
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_cstr(pk, "entries");
    (void)msgpack_pack_array(pk, b.n);
    for (size_t off = 0; off < b.len;) {
        const char *type = b.p + off;
        const char *name = type + strlen(type) + 1;
        size_t nl = strlen(name);
        (void)msgpack_pack_map(pk, 2);
        sbx_pack_cstr(pk, "name");
        sbx_pack_bstr(pk, name, nl);
        sbx_pack_kv_str(pk, "type", type);
        off = (size_t)(name + nl + 1 - b.p);
    }
    sbx_pack_cstr(pk, "cursor");
    if (more) {
        char id[16];
        (void)snprintf(id, sizeof(id), "c%u", cur->id);
        sbx_pack_cstr(pk, id);
    } else {
        (void)msgpack_pack_nil(pk);
        cursor_free(fs, cur);
    }
    agent_conn_send(c);
    free(b.p);
    return AGENT_REPLIED;
}

void agent_fs_cursors_free(struct agent_fs *fs)
{
    while (!agent_list_empty(&fs->cursors)) {
        cursor_free(fs, agent_container_of(fs->cursors.next, struct fs_cursor, link));
    }
}
