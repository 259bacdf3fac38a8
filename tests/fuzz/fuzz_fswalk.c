/*
 * libFuzzer target for fs.walk (agent/fswalk.c, linked as it is into the agent): the request's
 * params through agent_fs_walk (regs_param's regcomp of `match` and `skip`, `exts`, depth and the
 * include flags), then the walk itself on a real loop over a small scratch tree the input
 * describes, made per input under /dev/shm inside fuzz_sandbox.h's mount namespace and removed
 * after. The connection and stream around the walk are the target's (a credit window the input
 * picks, granted again each time the walk waits for it); the file system, the regex engine and
 * the loop are the real ones.
 *
 * Input: byte 0 flags (bits 0-1 the root as given: "/dev/shm/w/r", the same with a trailing '/',
 * "/dev/shm/w/rl" a symlink to it, or "r" with cwd "/dev/shm/w/"; bits 2-4 the credit window;
 * bit 5 the connection goes after the walk's first wait for credit). Bytes 1-2 the length of the
 * params part (little-endian), then the params: a msgpack map (past the decoder's pre-scan; its
 * entries are the request's but for path, cwd and user, which the target sets), or lines:
 * "m<regex>", "s<regex>", "e<ext>" add to match, skip, exts; "d<n>" max_depth; "F", "D", "L", "f"
 * then '0' or '1' include_files, include_dirs, include_symlinks, follow_symlinks (another
 * character: a string, the wrong type); "M", "S", "E" set match, skip, exts to a string. The rest
 * describes the tree: records of a byte (bits 0-1 file, directory, symlink or FIFO; bits 2-7 the
 * parent directory, by index) and a NUL-terminated name (any bytes but '/'); a symlink's target
 * follows: a byte below 0x80 and a NUL-terminated name (one component, "." and ".." included), or
 * one of fixed targets (outside the root, dangling, the root itself, above it, an entry of the tree
 * by absolute or relative path). Beside the root lies a directory the walk must not reach unless it
 * follows a link there.
 *
 * Checked: a refused param set has a code and a message (and one of the right types is refused
 * only for a pattern); the patterns of an accepted one compile; every data message is whole entries
 * (an entry never spans two), within credit, and the stream ends once, without error; every entry
 * is under the root as given (its path is the root joined with names by '/', its depth is their
 * count, its name the last one) and names a node of that type reached without a symlink unless
 * follow_symlinks; what is reported obeys the filters, checked with regexec here (no skip pattern
 * matches the entry or a directory above it; a match pattern matches it, its name ends with an ext,
 * its type is included, unless it carries an error); the entries are exactly those of a model of
 * PROTOCOL.md §17.4 walking the same tree, in the same order; no fd, handle or file is left. A
 * tree whose walk is too long to model (directories linked among themselves, followed) is not
 * walked: the connection goes at once.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>
#include <uv.h>

#include "conn.h"
#include "fs.h"
#include "fuzz_sandbox.h"
#include "path.h"
#include "stream.h"
#include "strv.h"
#include "user.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_BASE  FUZZ_SANDBOX_SCRATCH "/w"
#define FZ_ROOT  FZ_BASE "/r"
#define FZ_ROOTL FZ_BASE "/rl"
#define FZ_OUT   FZ_BASE "/out"
#define FZ_NODES 24   /* nodes of one tree */
#define FZ_MODEL 4096 /* entries the model visits; a tree whose walk is longer is not walked */
#define FZ_LONG  8000 /* paths longer than this: the model does not judge the length rule */

__attribute__((noreturn)) static void fz_fail(const char *what, const char *path)
{
    fprintf(stderr, "fswalk: %s%s%.300s\n", what, path != NULL ? ": " : "",
            path != NULL ? path : "");
    abort();
}

/* --- the agent around the walk: a connection, a stream, the request's identity --------------- */

static msgpack_sbuffer fz_reply_buf;
static msgpack_packer fz_reply_pk;
static unsigned fz_replies;
static uint32_t fz_reply_sid;

static struct agent_stream *fz_stream;
static uint64_t fz_credit;
static bool fz_ended, fz_gone;

struct fz_ent {
    char *path;
    char *name;
    char type[16];
    uint64_t depth;
    bool err;
};

static struct fz_ent *fz_got;
static size_t fz_ngot, fz_capgot;

msgpack_packer *agent_conn_begin(struct agent_conn *c)
{
    (void)c;
    msgpack_sbuffer_clear(&fz_reply_buf);
    msgpack_packer_init(&fz_reply_pk, &fz_reply_buf, msgpack_sbuffer_write);
    return &fz_reply_pk;
}

/* The one response: [1, 7, nil, {stream: sid}] for the stream just made. */
void agent_conn_send(struct agent_conn *c)
{
    msgpack_unpacked u;
    size_t off = 0;
    const msgpack_object *o;

    (void)c;
    fz_replies++;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, fz_reply_buf.data, fz_reply_buf.size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != fz_reply_buf.size || u.data.type != MSGPACK_OBJECT_ARRAY ||
        u.data.via.array.size != 4) {
        fz_fail("the response is not one [kind, id, error, result] array", NULL);
    }
    o = u.data.via.array.ptr;
    if (o[0].via.u64 != 1 || o[1].via.u64 != 7 || o[2].type != MSGPACK_OBJECT_NIL ||
        o[3].type != MSGPACK_OBJECT_MAP || o[3].via.map.size != 1 ||
        o[3].via.map.ptr[0].val.type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        fz_fail("the response is not [1, 7, nil, {stream: sid}]", NULL);
    }
    fz_reply_sid = (uint32_t)o[3].via.map.ptr[0].val.via.u64;
    msgpack_unpacked_destroy(&u);
}

int agent_ident_param(struct agent *a, const msgpack_object *params, struct agent_ident *id,
                      struct sbx_err *err)
{
    (void)a;
    (void)params;
    (void)err;
    memset(id, 0, sizeof(*id));
    id->self = true;
    return 0;
}

int agent_ident_enter_err(const struct agent_ident *id, struct agent_ident_scope *sc,
                          struct sbx_err *err)
{
    (void)id;
    (void)err;
    sc->active = true;
    return 0;
}

void agent_ident_leave(struct agent_ident_scope *sc)
{
    sc->active = false;
}

int agent_stream_reserve(const struct agent_conn *c, uint32_t n, struct sbx_err *err)
{
    (void)c;
    (void)n;
    (void)err;
    return 0;
}

struct agent_stream *agent_stream_new_ops(struct agent_conn *c, enum agent_stream_dir dir,
                                          const struct agent_stream_ops *ops, void *owner,
                                          struct sbx_err *err)
{
    (void)err;
    if (fz_stream != NULL || dir != AGENT_STREAM_OUT) {
        fz_fail("a second stream, or not an out stream", NULL);
    }
    fz_stream = calloc(1, sizeof(*fz_stream));
    if (fz_stream == NULL) {
        abort();
    }
    fz_stream->conn = c;
    fz_stream->id = 5;
    fz_stream->dir = dir;
    fz_stream->ops = ops;
    fz_stream->owner = owner;
    return fz_stream;
}

uint32_t agent_stream_writable(const struct agent_stream *s)
{
    if (s != fz_stream || fz_ended || fz_gone) {
        fz_fail("writable asked of a stream that is gone", NULL);
    }
    return fz_credit > UINT32_MAX ? UINT32_MAX : (uint32_t)fz_credit;
}

static void fz_got_add(const msgpack_object *o)
{
    struct fz_ent e = { 0 };
    bool have[4] = { false };

    if (o->type != MSGPACK_OBJECT_MAP) {
        fz_fail("an entry is not a map", NULL);
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        const char *p;
        size_t n;

        if (k->type != MSGPACK_OBJECT_STR) {
            fz_fail("an entry's key is not a string", NULL);
        }
#define FZ_KEY(s) (k->via.str.size == strlen(s) && memcmp(k->via.str.ptr, s, strlen(s)) == 0)
        if ((FZ_KEY("path") || FZ_KEY("name")) && sbx_obj_bytes(v, &p, &n) &&
            memchr(p, '\0', n) == NULL) {
            char **dst = FZ_KEY("path") ? &e.path : &e.name;
            have[FZ_KEY("path") ? 0 : 1] = true;
            if ((*dst = strndup(p, n)) == NULL) {
                abort();
            }
        } else if (FZ_KEY("type") && v->type == MSGPACK_OBJECT_STR &&
                   v->via.str.size < sizeof(e.type)) {
            memcpy(e.type, v->via.str.ptr, v->via.str.size);
            have[2] = true;
        } else if (FZ_KEY("depth") && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            e.depth = v->via.u64;
            have[3] = true;
        } else if (FZ_KEY("error") && v->type == MSGPACK_OBJECT_MAP && v->via.map.size > 0) {
            e.err = true;
        } else {
            fz_fail("an entry has an unknown field or a field of the wrong type", NULL);
        }
#undef FZ_KEY
    }
    if (!have[0] || !have[1] || !have[2] || !have[3]) {
        fz_fail("an entry lacks path, name, type or depth", e.path);
    }
    if (fz_ngot == fz_capgot) {
        size_t cap = fz_capgot ? fz_capgot * 2 : 64;
        struct fz_ent *p = realloc(fz_got, cap * sizeof(*p));
        if (p == NULL) {
            abort();
        }
        fz_got = p;
        fz_capgot = cap;
    }
    fz_got[fz_ngot++] = e;
}

/* One data message: whole entries, back to back. */
void agent_stream_send_copy(struct agent_stream *s, const void *data, uint32_t len)
{
    msgpack_unpacked u;
    size_t off = 0;

    if (s != fz_stream || fz_ended || fz_gone) {
        fz_fail("data on a stream that is gone", NULL);
    }
    if (len == 0 || len > fz_credit) {
        fz_fail("an empty data message, or one beyond the credit", NULL);
    }
    fz_credit -= len;
    msgpack_unpacked_init(&u);
    while (off < len) {
        if (msgpack_unpack_next(&u, data, len, &off) != MSGPACK_UNPACK_SUCCESS) {
            fz_fail("a data message does not end with a whole entry", NULL);
        }
        fz_got_add(&u.data);
    }
    msgpack_unpacked_destroy(&u);
}

void agent_stream_end(struct agent_stream *s, const struct sbx_err *e, bool truncated)
{
    if (s != fz_stream || fz_ended || fz_gone) {
        fz_fail("stream.end on a stream that is gone", NULL);
    }
    if (e != NULL || truncated) {
        fz_fail("the walk ended its stream with an error", e != NULL ? e->msg : NULL);
    }
    fz_ended = true;
    free(fz_stream);
    fz_stream = NULL;
}

/* --- the scratch tree --------------------------------------------------------------------- */

struct fz_node {
    char rel[FZ_NODES * 256 + 1]; /* relative to the root */
    int kind;                     /* 0 file, 1 dir, 2 symlink, 3 FIFO */
    unsigned depth;               /* components of rel */
};

static struct fz_node fz_nodes[FZ_NODES];
static unsigned fz_nnodes;

/* A name from the input up to a NUL (at most 255 bytes; '/' becomes '%'; never "", "." or ".."
 * unless @dots). Advances *@p. */
static void fz_take_name(const uint8_t **p, const uint8_t *end, char *out, bool dots)
{
    size_t n = 0;

    while (*p < end && **p != 0) {
        if (n < 255) {
            out[n++] = **p == '/' ? '%' : (char)**p;
        }
        (*p)++;
    }
    if (*p < end) {
        (*p)++; /* the NUL */
    }
    out[n] = '\0';
    if (n == 0 || (!dots && (strcmp(out, ".") == 0 || strcmp(out, "..") == 0))) {
        strcpy(out, n == 0 ? "e" : "dot");
    }
}

/* A symlink's target from the input (see the header). */
static void fz_take_target(const uint8_t **p, const uint8_t *end, const struct fz_node *parent,
                           char *out, size_t outsz)
{
    uint8_t t = *p < end ? *(*p)++ : 0;
    const struct fz_node *pick = fz_nnodes > 0 ? &fz_nodes[(t >> 3) % fz_nnodes] : NULL;
    unsigned up = parent != NULL ? parent->depth + 1 : 0; /* ".." steps from the link to the root */
    size_t n = 0;

    if (t < 0x80) {
        fz_take_name(p, end, out, true);
        return;
    }
    switch (t & 7) {
    case 0:
        snprintf(out, outsz, "%s", FZ_OUT);
        return;
    case 1:
        snprintf(out, outsz, "%s/canary", FZ_OUT);
        return;
    case 2:
        snprintf(out, outsz, "%s/none", FZ_BASE);
        return;
    case 3:
        snprintf(out, outsz, "%s", FZ_ROOT);
        return;
    case 4:
        snprintf(out, outsz, "%s", FZ_BASE);
        return;
    case 5:
        snprintf(out, outsz, "%s/%s", FZ_ROOT, pick != NULL ? pick->rel : "");
        return;
    case 6:
        for (unsigned i = 0; i < up && n + 3 < outsz; i++) {
            memcpy(out + n, "../", 3);
            n += 3;
        }
        snprintf(out + n, outsz - n, "%s", pick != NULL ? pick->rel : ".");
        return;
    default:
        snprintf(out, outsz, "../..");
        return;
    }
}

static void fz_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        fz_fail("cannot make", path);
    }
    close(fd);
}

static void fz_tree_make(const uint8_t *p, const uint8_t *end)
{
    char path[FZ_NODES * 256 + 64], name[256], target[FZ_NODES * 256 + 64];

    if (mkdir(FZ_BASE, 0755) < 0 || mkdir(FZ_ROOT, 0755) < 0 || mkdir(FZ_OUT, 0755) < 0 ||
        mkdir(FZ_OUT "/sub", 0755) < 0 || symlink("r", FZ_ROOTL) < 0) {
        fz_fail("cannot make the scratch directories", FZ_BASE);
    }
    fz_write_file(FZ_OUT "/canary", "outside the root\n");
    fz_nnodes = 0;
    while (p < end && fz_nnodes < FZ_NODES) {
        uint8_t op = *p++;
        int kind = op & 3;
        unsigned ndirs = 1, pick = (op >> 2) & 63, di = 0;
        const struct fz_node *parent = NULL;
        struct fz_node *nd = &fz_nodes[fz_nnodes];
        int r;

        for (unsigned i = 0; i < fz_nnodes; i++) {
            ndirs += fz_nodes[i].kind == 1;
        }
        pick %= ndirs; /* 0: the root, k: the k-th directory made */
        for (unsigned i = 0; i < fz_nnodes && pick > 0; i++) {
            if (fz_nodes[i].kind == 1 && ++di == pick) {
                parent = &fz_nodes[i];
            }
        }
        fz_take_name(&p, end, name, false);
        if (kind == 2) {
            fz_take_target(&p, end, parent, target, sizeof(target));
        }
        if (snprintf(nd->rel, sizeof(nd->rel), "%s%s%s", parent != NULL ? parent->rel : "",
                     parent != NULL ? "/" : "", name) >= (int)sizeof(nd->rel)) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", FZ_ROOT, nd->rel);
        switch (kind) {
        case 0:
            r = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (r >= 0) {
                close(r);
            }
            break;
        case 1:
            r = mkdir(path, 0755);
            break;
        case 2:
            r = symlink(target, path);
            break;
        default:
            r = mkfifo(path, 0644);
            break;
        }
        if (r < 0) {
            continue; /* a name made twice, or too long */
        }
        nd->kind = kind;
        nd->depth = parent != NULL ? parent->depth + 1 : 0;
        fz_nnodes++;
    }
}

static void fz_remove_at(int dfd, const char *name)
{
    const char *what = NULL;

    if (fuzz_scratch_remove(dfd, name, &what) < 0) {
        fz_fail(what, name);
    }
}

/* --- the params --------------------------------------------------------------------------- */

static msgpack_sbuffer fz_params_buf;

static void fz_pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    (void)msgpack_pack_str(pk, n);
    (void)msgpack_pack_str_body(pk, s, n);
}

static void fz_pack_path(msgpack_packer *pk, unsigned form)
{
    static const char *const roots[] = { FZ_ROOT, FZ_ROOT "/", FZ_ROOTL, "r" };

    fz_pack_str(pk, "path", 4);
    fz_pack_str(pk, roots[form], strlen(roots[form]));
    if (form == 3) {
        fz_pack_str(pk, "cwd", 3);
        fz_pack_str(pk, FZ_BASE "/", strlen(FZ_BASE "/"));
    }
}

static bool fz_key_is(const msgpack_object *k, const char *s)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
           memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

/* Raw msgpack: the input's map, but for path, cwd and user. Returns false if it is not a map. */
static bool fz_params_raw(const uint8_t *p, size_t n, unsigned form)
{
    msgpack_unpacked u;
    msgpack_packer pk;
    struct sbx_err e = { 0 };
    size_t off = 0;
    uint32_t keep = 0;

    /* The decoder's pre-scan first, as the agent reads a request: no header sizes an
     * allocation the bytes do not justify. */
    if (sbx_msgpack_validate(p, n, &e) < 0) {
        return false;
    }
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, (const char *)p, n, &off) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&u);
        return false;
    }
    msgpack_packer_init(&pk, &fz_params_buf, msgpack_sbuffer_write);
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object *k = &u.data.via.map.ptr[i].key;
        keep += !fz_key_is(k, "path") && !fz_key_is(k, "cwd") && !fz_key_is(k, "user");
    }
    (void)msgpack_pack_map(&pk, keep + (form == 3 ? 2 : 1));
    fz_pack_path(&pk, form);
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (!fz_key_is(&kv->key, "path") && !fz_key_is(&kv->key, "cwd") &&
            !fz_key_is(&kv->key, "user")) {
            (void)msgpack_pack_object(&pk, kv->key);
            (void)msgpack_pack_object(&pk, kv->val);
        }
    }
    msgpack_unpacked_destroy(&u);
    return true;
}

/* Lines (see the header) into a params map. */
static void fz_params_lines(const uint8_t *p, size_t n, unsigned form)
{
    static const char lists[] = "mse", flags[] = "FDLf", strs[] = "MSE";
    static const char *const list_keys[] = { "match", "skip", "exts" };
    static const char *const flag_keys[] = { "include_files", "include_dirs", "include_symlinks",
                                             "follow_symlinks" };
    const uint8_t *line[3][64], *end = p + n;
    size_t len[3][64];
    unsigned count[3] = { 0 }, keys = 0;
    int flag[4] = { -1, -1, -1, -1 }, depth_line = -1;
    const uint8_t *as_str[3] = { NULL }, *depth = NULL;
    size_t as_str_len[3] = { 0 }, depth_len = 0;
    msgpack_packer pk;

    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        const char *c;

        if (l > 0 && (c = memchr(lists, p[0], 3)) != NULL && count[c - lists] < 64) {
            line[c - lists][count[c - lists]] = p + 1;
            len[c - lists][count[c - lists]++] = l - 1;
        } else if (l > 0 && (c = memchr(flags, p[0], 4)) != NULL) {
            flag[c - flags] = l > 1 && (p[1] == '0' || p[1] == '1') ? p[1] - '0' : 2;
        } else if (l > 0 && (c = memchr(strs, p[0], 3)) != NULL) {
            as_str[c - strs] = p + 1;
            as_str_len[c - strs] = l - 1;
        } else if (l > 0 && p[0] == 'd') {
            depth = p + 1;
            depth_len = l - 1;
            depth_line = 1;
        }
        p += l + (nl != NULL);
    }
    for (int i = 0; i < 3; i++) {
        keys += count[i] > 0 || as_str[i] != NULL;
    }
    for (int i = 0; i < 4; i++) {
        keys += flag[i] >= 0;
    }
    keys += depth_line > 0;
    msgpack_packer_init(&pk, &fz_params_buf, msgpack_sbuffer_write);
    (void)msgpack_pack_map(&pk, keys + (form == 3 ? 2 : 1));
    fz_pack_path(&pk, form);
    for (int i = 0; i < 3; i++) {
        if (as_str[i] != NULL) {
            fz_pack_str(&pk, list_keys[i], strlen(list_keys[i]));
            fz_pack_str(&pk, (const char *)as_str[i], as_str_len[i]);
        } else if (count[i] > 0) {
            fz_pack_str(&pk, list_keys[i], strlen(list_keys[i]));
            (void)msgpack_pack_array(&pk, count[i]);
            for (unsigned k = 0; k < count[i]; k++) {
                fz_pack_str(&pk, (const char *)line[i][k], len[i][k]);
            }
        }
    }
    for (int i = 0; i < 4; i++) {
        if (flag[i] >= 0) {
            fz_pack_str(&pk, flag_keys[i], strlen(flag_keys[i]));
            if (flag[i] == 2) {
                fz_pack_str(&pk, "yes", 3);
            } else if (flag[i]) {
                (void)msgpack_pack_true(&pk);
            } else {
                (void)msgpack_pack_false(&pk);
            }
        }
    }
    if (depth_line > 0) {
        uint64_t v = 0;
        bool num = depth_len > 0 && depth_len < 20;
        for (size_t i = 0; i < depth_len; i++) {
            num &= depth[i] >= '0' && depth[i] <= '9';
            v = v * 10 + (uint64_t)(depth[i] - '0');
        }
        fz_pack_str(&pk, "max_depth", 9);
        if (num) {
            (void)msgpack_pack_uint64(&pk, v);
        } else {
            (void)msgpack_pack_int64(&pk, -1); /* out of range */
        }
    }
}

/* --- what the params ask for, read as the protocol reads them --------------------------------- */

struct fz_opts {
    uint64_t max_depth;
    bool files, dirs, links, follow;
    char **exts, **match_s, **skip_s;
    size_t nmatch_s, nskip_s;
    regex_t match[64], skip[64]; /* compiled once the walk accepted them */
    unsigned nmatch, nskip;
};

static void fz_opts_free(struct fz_opts *o)
{
    agent_strv_free(o->exts);
    agent_strv_free(o->match_s);
    agent_strv_free(o->skip_s);
    for (unsigned i = 0; i < o->nmatch; i++) {
        regfree(&o->match[i]);
    }
    for (unsigned i = 0; i < o->nskip; i++) {
        regfree(&o->skip[i]);
    }
}

/* Whether the protocol's types accept the params; fills @o, patterns not yet compiled (a hostile
 * one costs regcomp seconds and a gigabyte: only those the walk accepted are). */
static bool fz_opts_read(const msgpack_object *params, struct fz_opts *o)
{
    struct sbx_err e = { 0 };

    memset(o, 0, sizeof(*o));
    o->max_depth = UINT64_MAX;
    o->files = o->dirs = o->links = true;
    return sbx_param_u64(params, "max_depth", SBX_OPTIONAL, 0, UINT64_MAX, &o->max_depth, &e) >=
               0 &&
           sbx_param_bool(params, "include_files", SBX_OPTIONAL, &o->files, &e) >= 0 &&
           sbx_param_bool(params, "include_dirs", SBX_OPTIONAL, &o->dirs, &e) >= 0 &&
           sbx_param_bool(params, "include_symlinks", SBX_OPTIONAL, &o->links, &e) >= 0 &&
           sbx_param_bool(params, "follow_symlinks", SBX_OPTIONAL, &o->follow, &e) >= 0 &&
           agent_strv_param(params, "exts", SBX_FS_PATTERNS_MAX, SBX_FS_NAME_MAX,
                            AGENT_STRV_NONEMPTY, &o->exts, NULL, &e) >= 0 &&
           agent_strv_param(params, "match", SBX_FS_PATTERNS_MAX, SBX_FS_REGEX_MAX,
                            AGENT_STRV_NONEMPTY, &o->match_s, &o->nmatch_s, &e) >= 0 &&
           agent_strv_param(params, "skip", SBX_FS_PATTERNS_MAX, SBX_FS_REGEX_MAX,
                            AGENT_STRV_NONEMPTY, &o->skip_s, &o->nskip_s, &e) >= 0;
}

/* Compile the patterns the walk accepted: every one must compile. */
static void fz_opts_compile(struct fz_opts *o)
{
    for (size_t i = 0; i < o->nmatch_s; i++, o->nmatch++) {
        if (regcomp(&o->match[i], o->match_s[i], REG_EXTENDED | REG_NOSUB) != 0) {
            fz_fail("the walk accepted a match pattern regcomp refuses", o->match_s[i]);
        }
    }
    for (size_t i = 0; i < o->nskip_s; i++, o->nskip++) {
        if (regcomp(&o->skip[i], o->skip_s[i], REG_EXTENDED | REG_NOSUB) != 0) {
            fz_fail("the walk accepted a skip pattern regcomp refuses", o->skip_s[i]);
        }
    }
}

static bool fz_any(const regex_t *r, unsigned n, const char *s)
{
    for (unsigned i = 0; i < n; i++) {
        if (regexec(&r[i], s, 0, NULL, 0) == 0) {
            return true;
        }
    }
    return false;
}

/* PROTOCOL.md §17.4: the name ends with one of exts, a leading '.' added where missing. */
static bool fz_ext(const struct fz_opts *o, const char *name)
{
    size_t nl = strlen(name);

    if (o->exts == NULL) {
        return true;
    }
    for (char **e = o->exts; *e != NULL; e++) {
        char want[SBX_FS_NAME_MAX + 2];
        size_t wl = (size_t)snprintf(want, sizeof(want), "%s%s", (*e)[0] == '.' ? "" : ".", *e);
        if (nl >= wl && memcmp(name + nl - wl, want, wl) == 0) {
            return true;
        }
    }
    return false;
}

static const char *fz_type(mode_t m)
{
    return S_ISDIR(m)    ? "dir"
           : S_ISLNK(m)  ? "symlink"
           : S_ISREG(m)  ? "file"
           : S_ISFIFO(m) ? "fifo"
                         : "other";
}

/* --- the model: the walk PROTOCOL.md §17.4 describes, over the same tree -------------------- */

static struct fz_ent *fz_want;
static size_t fz_nwant, fz_capwant, fz_visited;
static bool fz_unsure, fz_toobig;

static void fz_want_add(const char *path, const char *type, uint64_t depth, bool err)
{
    const char *slash = strrchr(path, '/');
    struct fz_ent e = { .depth = depth, .err = err };

    if (fz_nwant == fz_capwant) {
        size_t cap = fz_capwant ? fz_capwant * 2 : 64;
        struct fz_ent *p = realloc(fz_want, cap * sizeof(*p));
        if (p == NULL) {
            abort();
        }
        fz_want = p;
        fz_capwant = cap;
    }
    snprintf(e.type, sizeof(e.type), "%s", type);
    e.path = strdup(path);
    e.name = strdup(slash != NULL && slash[1] != '\0' ? slash + 1 : path);
    if (e.path == NULL || e.name == NULL) {
        abort();
    }
    fz_want[fz_nwant++] = e;
}

struct fz_frame {
    dev_t dev;
    ino_t ino;
};

static void fz_model_dir(const struct fz_opts *o, int dfd, const char *path, uint64_t depth,
                         struct fz_frame *stack, unsigned top)
{
    int fd = dup(dfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    size_t pl = strlen(path);

    if (d == NULL) {
        fz_fail("the model cannot read", path);
    }
    while (!fz_toobig && (de = readdir(d)) != NULL) {
        char *child;
        struct stat st, tst;
        bool isdir, islink, report, descend = false;
        uint64_t cd = depth + 1;

        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (++fz_visited > FZ_MODEL) {
            fz_toobig = true;
            break;
        }
        if (asprintf(&child, "%s%s%s", path, pl > 0 && path[pl - 1] == '/' ? "" : "/", de->d_name) <
            0) {
            abort();
        }
        if (strlen(child) > FZ_LONG) {
            fz_unsure = true; /* near the protocol's path length: not judged here */
            free(child);
            continue;
        }
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            fz_fail("the model cannot stat", child);
        }
        isdir = S_ISDIR(st.st_mode);
        islink = S_ISLNK(st.st_mode);
        if (fz_any(o->skip, o->nskip, child)) {
            free(child);
            continue;
        }
        report = isdir ? o->dirs : islink ? o->links : o->files;
        report = report && (isdir || fz_ext(o, de->d_name)) &&
                 (o->nmatch == 0 || fz_any(o->match, o->nmatch, child));
        if (cd < o->max_depth) {
            descend =
                isdir || (islink && o->follow && fstatat(dirfd(d), de->d_name, &tst, 0) == 0 &&
                          S_ISDIR(tst.st_mode));
        }
        if (descend) {
            int cfd = -1;
            bool loop = false;

            if (top >= SBX_FS_WALK_OPEN_MAX) {
                fz_want_add(child, fz_type(st.st_mode), cd, true);
                free(child);
                continue;
            }
            cfd = openat(dirfd(d), de->d_name,
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC | (islink ? 0 : O_NOFOLLOW));
            if (cfd < 0 || fstat(cfd, &tst) < 0) {
                fz_fail("the model cannot open", child);
            }
            for (unsigned i = 0; i < top; i++) {
                loop |= stack[i].dev == tst.st_dev && stack[i].ino == tst.st_ino;
            }
            if (loop) {
                fz_want_add(child, fz_type(st.st_mode), cd, true); /* ELOOP */
            } else {
                if (report) {
                    fz_want_add(child, fz_type(st.st_mode), cd, false);
                }
                stack[top] = (struct fz_frame){ tst.st_dev, tst.st_ino };
                fz_model_dir(o, cfd, child, cd, stack, top + 1);
            }
            close(cfd);
        } else if (report) {
            fz_want_add(child, fz_type(st.st_mode), cd, false);
        }
        free(child);
    }
    closedir(d);
}

static void fz_model(const struct fz_opts *o, const char *given, const char *abs)
{
    static struct fz_frame stack[SBX_FS_WALK_OPEN_MAX];
    struct stat lst, st;
    int fd;

    if (lstat(abs, &lst) < 0 || (fd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        fstat(fd, &st) < 0) {
        fz_fail("the model cannot open the root", abs);
    }
    /* The root: reported with include_dirs when match (if any) matches; skip and exts do not
     * apply to it. */
    if (o->dirs && (o->nmatch == 0 || fz_any(o->match, o->nmatch, given))) {
        fz_want_add(given, fz_type(lst.st_mode), 0, false);
        free(fz_want[fz_nwant - 1].name);
        fz_want[fz_nwant - 1].name = NULL; /* the root's name: any suffix of its path */
    }
    if (o->max_depth > 0) {
        stack[0] = (struct fz_frame){ st.st_dev, st.st_ino };
        fz_model_dir(o, fd, given, 0, stack, 1);
    }
    close(fd);
}

/* --- the checks of one reported entry ----------------------------------------------------- */

static void fz_check_entry(const struct fz_opts *o, const char *given, const char *abs,
                           const struct fz_ent *e)
{
    size_t gl = strlen(given);
    const char *rel, *c;
    uint64_t comps = 0;
    int dfd;
    struct stat st;
    char sofar[2 * AGENT_FS_PATH_BUF];

    if (strncmp(e->path, given, gl) != 0) {
        fz_fail("an entry is not under the root as given", e->path);
    }
    rel = e->path + gl;
    if (e->depth == 0) {
        size_t nl = strlen(e->name);
        if (*rel != '\0' || nl == 0 || nl > gl || strcmp(given + gl - nl, e->name) != 0) {
            fz_fail("the root entry has another path, or a name that does not end it", e->path);
        }
    } else if (!(gl > 0 && given[gl - 1] == '/') && *rel++ != '/') {
        fz_fail("an entry is not joined to the root by '/'", e->path);
    }
    if (e->depth > o->max_depth) {
        fz_fail("an entry deeper than max_depth", e->path);
    }
    /* Each component: a name a directory holds (no "", "." or ".."), reached through directories,
     * or links to them only with follow_symlinks; the last one of the type reported. */
    if ((dfd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        fz_fail("cannot open the root", abs);
    }
    snprintf(sofar, sizeof(sofar), "%s", given);
    for (c = rel; e->depth > 0;) {
        size_t n = strcspn(c, "/");
        char name[256];
        bool last = c[n] == '\0';
        int nfd;

        comps++;
        if (n == 0 || n > 255 || (n == 1 && c[0] == '.') ||
            (n == 2 && c[0] == '.' && c[1] == '.')) {
            fz_fail("an entry's path has an empty, \".\" or \"..\" component", e->path);
        }
        memcpy(name, c, n);
        name[n] = '\0';
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            fz_fail("an entry names nothing in the tree", e->path);
        }
        if (last) {
            if (strcmp(e->name, name) != 0 || strcmp(e->type, fz_type(st.st_mode)) != 0) {
                fz_fail("an entry's name or type is not its node's", e->path);
            }
            break;
        }
        if (S_ISLNK(st.st_mode) && !o->follow) {
            fz_fail("an entry reached through a symlink without follow_symlinks", e->path);
        }
        nfd = openat(dfd, name,
                     O_RDONLY | O_DIRECTORY | O_CLOEXEC | (S_ISLNK(st.st_mode) ? 0 : O_NOFOLLOW));
        if (nfd < 0) {
            fz_fail("an entry is below something that is not a directory", e->path);
        }
        close(dfd);
        dfd = nfd;
        /* A directory above the entry that a skip pattern names is never descended into. */
        snprintf(sofar + strlen(sofar), sizeof(sofar) - strlen(sofar), "%s%.*s",
                 comps == 1 && gl > 0 && given[gl - 1] == '/' ? "" : "/", (int)n, c);
        if (fz_any(o->skip, o->nskip, sofar)) {
            fz_fail("an entry below a directory that skip names", e->path);
        }
        c += n + 1;
    }
    close(dfd);
    if (comps != e->depth) {
        fz_fail("an entry's depth is not its number of components", e->path);
    }
    if (e->depth > 0 && fz_any(o->skip, o->nskip, e->path)) {
        fz_fail("a skip pattern matches a reported entry", e->path);
    }
    if (e->err) {
        return; /* reported whatever the include filters say (§17.4) */
    }
    if (o->nmatch > 0 && !fz_any(o->match, o->nmatch, e->path)) {
        fz_fail("no match pattern matches a reported entry", e->path);
    }
    if (e->depth > 0) {
        bool isdir = strcmp(e->type, "dir") == 0, islink = strcmp(e->type, "symlink") == 0;
        if (!(isdir ? o->dirs : islink ? o->links : o->files)) {
            fz_fail("an entry of a type the include flags leave out", e->path);
        }
        if (!isdir && !fz_ext(o, e->name)) {
            fz_fail("a non-directory whose name ends with none of exts", e->path);
        }
    } else if (!o->dirs) {
        fz_fail("the root reported without include_dirs", e->path);
    }
}

/* --- one input ---------------------------------------------------------------------------- */

static void fz_ents_free(struct fz_ent *v, size_t *n)
{
    for (size_t i = 0; i < *n; i++) {
        free(v[i].path);
        free(v[i].name);
    }
    *n = 0;
}

static void fz_walk(const struct sbx_msg *m, uint8_t flags, const char *given, const char *abs,
                    bool readable, struct fz_opts *o)
{
    static const uint64_t windows[] = { UINT64_C(1) << 40, 64, 100, 300, 1000, 4096, 65536, 150 };
    uint64_t window = windows[(flags >> 2) & 7];
    struct sbx_err err = { 0 };
    uv_loop_t loop;
    struct agent a = { .loop = &loop };
    struct agent_conn c = { .a = &a };
    unsigned rounds = 0;
    int rc;

    if (uv_loop_init(&loop) != 0) {
        abort();
    }
    fz_credit = window;
    rc = agent_fs_walk(&c, m, &err);
    if (rc < 0) {
        if (err.code[0] == '\0' || err.msg[0] == '\0' ||
            memchr(err.code, '\0', sizeof(err.code)) == NULL ||
            memchr(err.msg, '\0', sizeof(err.msg)) == NULL) {
            fz_fail("a refused walk without a code or a message", NULL);
        }
        if (fz_stream != NULL || fz_replies != 0) {
            fz_fail("a refused walk made a stream or replied", err.msg);
        }
        if (readable && strncmp(err.field, "match", 5) != 0 && strncmp(err.field, "skip", 4) != 0) {
            fz_fail("a walk refused for other than a pattern, its params being valid", err.msg);
        }
    } else {
        if (rc != AGENT_REPLIED || fz_replies != 1 || fz_stream == NULL ||
            fz_reply_sid != fz_stream->id) {
            fz_fail("an accepted walk did not reply once with its stream", NULL);
        }
        if (!readable) {
            fz_fail("a walk accepted params the protocol's readers refuse", NULL);
        }
        /* The model only now: a pattern the walk refused may take minutes to match. A tree whose
         * walk is too long to judge (links among directories, followed) is not walked: the
         * connection goes at once. */
        fz_opts_compile(o);
        fz_model(o, given, abs);
        while (!fz_ended && !fz_gone) {
            if (!fz_toobig) {
                (void)uv_run(&loop, UV_RUN_DEFAULT);
            }
            if (fz_ended) {
                break;
            }
            /* The walk waits for credit: the connection goes, or the client grants more. */
            if (fz_toobig || (flags & 0x20) != 0) {
                struct agent_stream *s = fz_stream;
                fz_gone = true;
                s->ops->gone(s, true);
                free(s);
                fz_stream = NULL;
                break;
            }
            if (++rounds > 1000000) {
                fz_fail("the walk makes no progress with credit", NULL);
            }
            fz_credit += window;
            fz_stream->ops->ready(fz_stream);
        }
    }
    (void)uv_run(&loop, UV_RUN_DEFAULT); /* the walk's handle closes */
    if (uv_loop_close(&loop) != 0) {
        fz_fail("the walk left a handle on the loop", NULL);
    }
    if (rc < 0 || !fz_ended || fz_toobig) {
        return;
    }
    for (size_t i = 0; i < fz_ngot; i++) {
        fz_check_entry(o, given, abs, &fz_got[i]);
    }
    if (!fz_unsure) {
        for (size_t i = 0; i < fz_ngot || i < fz_nwant; i++) {
            const struct fz_ent *g = i < fz_ngot ? &fz_got[i] : NULL;
            const struct fz_ent *w = i < fz_nwant ? &fz_want[i] : NULL;
            if (g == NULL || w == NULL || strcmp(g->path, w->path) != 0 ||
                strcmp(g->type, w->type) != 0 || g->depth != w->depth || g->err != w->err) {
                fprintf(stderr, "fswalk: entry %zu: walk %s %s, model %s %s\n", i,
                        g != NULL ? g->type : "-", g != NULL ? g->path : "(none)",
                        w != NULL ? w->type : "-", w != NULL ? w->path : "(none)");
                fz_fail("the walk's entries are not the model's", NULL);
            }
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_sandbox_enter(*argc, *argv);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const givens[] = { FZ_ROOT, FZ_ROOT "/", FZ_ROOTL, "r" };
    static const char *const abss[] = { FZ_ROOT, FZ_ROOT, FZ_ROOTL, FZ_BASE "/r" };
    /* The request around the params: [0, 7, "fs.walk", params]. */
    static const char head[] = "\x94\x00\x07\xa7"
                               "fs.walk";
    struct sbx_decoder dec;
    struct sbx_err err = { 0 };
    struct sbx_msg m = { 0 };
    struct fz_opts o;
    uint8_t flags;
    size_t plen;
    int fds;
    bool readable;
    unsigned form;
    static bool warm;

    fuzz_sandbox_enter(0, NULL);
    if (!warm) {
        uv_loop_t loop;
        /* libuv's first loop opens fds it keeps for the process (its signal lock pipe). */
        warm = true;
        if (uv_loop_init(&loop) != 0 || uv_loop_close(&loop) != 0) {
            abort();
        }
    }
    if (size < 3) {
        return 0;
    }
    flags = data[0];
    form = flags & 3;
    plen = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3;
    size -= 3;
    if (plen > size) {
        plen = size;
    }
    fds = fuzz_count_fds();
    msgpack_sbuffer_init(&fz_params_buf);
    (void)msgpack_sbuffer_write(&fz_params_buf, head, sizeof(head) - 1);
    if (plen == 0 ||
        !((data[0] >= 0x80 && data[0] <= 0x8f) || data[0] == 0xde || data[0] == 0xdf) ||
        !fz_params_raw(data, plen, form)) {
        msgpack_sbuffer_clear(&fz_params_buf);
        (void)msgpack_sbuffer_write(&fz_params_buf, head, sizeof(head) - 1);
        fz_params_lines(data, plen, form);
    }
    if (sbx_decoder_init(&dec) < 0) {
        abort();
    }
    if (sbx_msg_decode(&dec, (const uint8_t *)fz_params_buf.data, fz_params_buf.size, &m, &err) <
            0 ||
        m.kind != SBX_MSG_REQUEST || m.params == NULL) {
        /* Over the decoder's caps once the target's own keys are added: no request. */
        sbx_decoder_destroy(&dec);
        msgpack_sbuffer_destroy(&fz_params_buf);
        return 0;
    }
    msgpack_sbuffer_init(&fz_reply_buf);

    fz_tree_make(data + plen, data + size);
    readable = fz_opts_read(m.params, &o);
    fz_unsure = fz_toobig = false;
    fz_visited = 0;
    fz_walk(&m, flags, givens[form], abss[form], readable, &o);

    fz_opts_free(&o); /* what fz_opts_read took before it failed, too */
    fz_ents_free(fz_got, &fz_ngot);
    fz_ents_free(fz_want, &fz_nwant);
    fz_replies = 0;
    fz_ended = fz_gone = false;
    sbx_decoder_destroy(&dec);
    msgpack_sbuffer_destroy(&fz_params_buf);
    msgpack_sbuffer_destroy(&fz_reply_buf);
    fz_remove_at(AT_FDCWD, FZ_BASE);
    {
        DIR *d = opendir(FUZZ_SANDBOX_SCRATCH);
        struct dirent *de;
        if (d == NULL) {
            fz_fail("cannot read", FUZZ_SANDBOX_SCRATCH);
        }
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                fz_fail("left behind in the scratch tmpfs", de->d_name);
            }
        }
        closedir(d);
    }
    if (fds >= 0 && fuzz_count_fds() != fds) {
        fz_fail("an fd was left open", NULL);
    }
    return 0;
}
