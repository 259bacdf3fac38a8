/*
 * fs.walk and fs.glob (PROTOCOL.md §17.4, §17.5): a depth-first walk over a stack of open
 * directories that produces entry maps into an out stream, a batch at a time from an idle
 * handle, and only as far as the stream's credit allows (an entry never spans two messages).
 * Glob patterns (glob.c) are matched as the walk goes: each open directory carries the set of
 * pattern positions its path can have reached, so a directory is descended into only while some
 * pattern position is still alive. The walk reads the file system as the request's identity
 * (§17.1), switched to around the reads of each batch only.
 */
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "conn.h"
#include "fs.h"
#include "glob.h"
#include "path.h"
#include "stream.h"
#include "strv.h"

/* fs.glob's pattern syntax (PROTOCOL.md §17.5): braces, hidden names skipped by wildcards. */
#define WALK_GLOB (AGENT_GLOB_BRACES | AGENT_GLOB_PERIOD)

/*
 * How long one batch of a walk may hold the loop. Matching is not cheap on long paths: glibc's
 * regexec tries a match from every position of the path, so even `a.*b` takes 0.25 s against a
 * 7.9 KB path a workload can make (30 nested names of 255 bytes), and a batch that matched 130
 * such entries held every connection of the agent for 31 s. A batch also ends when this is
 * spent; the loop then stalls for at most one entry's matching (see WALK_REGEX_BRANCHES).
 */
#define WALK_SLICE_NS (10 * 1000 * 1000)

/*
 * What a walk's patterns may cost, together. glibc's regexec has no bound of its own: it keeps a
 * set of NFA states per position of the path and compiles a counted repetition as that many
 * copies of its operand, and a walk matches each entry against up to 128 patterns. Unbounded,
 * one entry held the loop for 35 s with (((a{0,20}){0,20}){0,20})$ against a 269-byte path (a
 * name of 255 a's; {0,30} takes minutes), and .?.?...$ (.? 2047 times, a 4 KB pattern) for 25 s
 * against a 7.9 KB one. So `match` and `skip` are refused when, with every counted repetition
 * written out, they hold more than SBX_FS_REGEX_MAX atoms together (one longest pattern's worth) or
 * more than WALK_REGEX_BRANCHES places where matching forks (?, *, +, |, each optional copy of
 * {m,n}): then the worst measured (.{0,64}, 4000 dots, $) costs 0.3 to 0.5 s per entry whose path
 * is 7.9 KB, and 2 ms against a path of a few hundred bytes.
 */
#define WALK_REGEX_BRANCHES 64u
#define REGEX_COST_SAT      (1u << 24) /* beyond every cap: sums and products stop here */
#define REGEX_UNBOUNDED     UINT64_MAX /* the upper bound of *, + and {m,} */

struct regex_cost {
    uint32_t atoms, branches;
};

struct wframe {
    DIR *dir;
    size_t plen;    /* length of the entry path of this directory in w->path */
    unsigned depth; /* depth of this directory */
    dev_t dev;
    ino_t ino;
    uint8_t *sets; /* glob: position sets of the pattern then each exclude, back to back */
};

struct agent_fswalk {
    struct agent_conn *conn;
    struct agent_stream *s;
    uv_idle_t idle;
    struct agent_ident who; /* whom the walk reads as */
    bool glob;
    bool done;
    /* walk options */
    uint64_t max_depth;
    bool inc_files, inc_dirs, inc_links, follow;
    char **exts;
    regex_t *match, *skip;
    unsigned nmatch, nskip;
    /* glob */
    struct agent_glob pat;
    struct agent_glob *excl;
    unsigned nexcl;
    size_t setstotal; /* bytes of a frame's sets */
    /* traversal */
    char rootabs[AGENT_FS_PATH_BUF];
    bool root_done;
    struct wframe st[SBX_FS_WALK_OPEN_MAX];
    unsigned top;
    char path[2 * AGENT_FS_PATH_BUF]; /* the entry path as reported: root as given + relative */
    size_t rootlen;
    unsigned scanned;   /* directory entries read in this batch */
    uint64_t slice_end; /* uv_hrtime() at which this batch yields */
    /* output */
    msgpack_sbuffer out; /* complete entries not yet sent */
    msgpack_sbuffer ent; /* the next entry, waiting for credit */
    msgpack_packer pk;   /* packs into ent */
};

/* --- the walk object ----------------------------------------------------------------------- */

static void walk_idle_close_cb(uv_handle_t *h)
{
    struct agent_fswalk *w = h->data;

    free(w);
}

static void walk_free(struct agent_fswalk *w)
{
    while (w->top > 0) {
        struct wframe *f = &w->st[--w->top];
        (void)closedir(f->dir);
        free(f->sets);
    }
    agent_strv_free(w->exts);
    for (unsigned i = 0; i < w->nmatch; i++) {
        regfree(&w->match[i]);
    }
    for (unsigned i = 0; i < w->nskip; i++) {
        regfree(&w->skip[i]);
    }
    free(w->match);
    free(w->skip);
    agent_glob_free(&w->pat);
    for (unsigned i = 0; i < w->nexcl; i++) {
        agent_glob_free(&w->excl[i]);
    }
    free(w->excl);
    msgpack_sbuffer_destroy(&w->out);
    msgpack_sbuffer_destroy(&w->ent);
    uv_close((uv_handle_t *)&w->idle, walk_idle_close_cb);
}

/* Pack one entry into w->ent: the current w->path, @name, @type, @depth, optional @e. */
static void walk_entry(struct agent_fswalk *w, const char *name, const char *type, unsigned depth,
                       const struct sbx_err *e)
{
    msgpack_packer *pk = &w->pk;

    (void)msgpack_pack_map(pk, 4 + (e != NULL));
    sbx_pack_cstr(pk, "path");
    sbx_pack_bstr(pk, w->path, strlen(w->path));
    sbx_pack_cstr(pk, "name");
    sbx_pack_bstr(pk, name, strlen(name));
    sbx_pack_kv_str(pk, "type", type);
    sbx_pack_kv_u64(pk, "depth", depth);
    if (e != NULL) {
        sbx_pack_cstr(pk, "error");
        sbx_pack_err(pk, e);
    }
}

static bool regs_match(const regex_t *r, unsigned n, const char *s)
{
    for (unsigned i = 0; i < n; i++) {
        if (regexec(&r[i], s, 0, NULL, 0) == 0) {
            return true;
        }
    }
    return false;
}

static bool ext_ok(struct agent_fswalk *w, const char *name)
{
    size_t nl = strlen(name);

    if (w->exts == NULL) {
        return true;
    }
    for (char **e = w->exts; *e != NULL; e++) {
        size_t el = strlen(*e);
        bool dot = (*e)[0] == '.';
        if (nl >= el + !dot && memcmp(name + nl - el, *e, el) == 0 &&
            (dot || name[nl - el - 1] == '.')) {
            return true;
        }
    }
    return false;
}

/* Open @name in the top frame's directory and push it; @sets (glob, taken over) are the
 * position sets for it. Fills @e and returns -1 when it cannot be descended into. */
static int walk_push(struct agent_fswalk *w, int dfd, const char *name, bool nofollow,
                     unsigned depth, uint8_t *sets, struct sbx_err *e)
{
    struct stat st;
    DIR *d;
    int fd;

    if (w->top >= SBX_FS_WALK_OPEN_MAX) {
        free(sets);
        sbx_err_limit(e, "walk_depth", SBX_FS_WALK_OPEN_MAX, "the walk is %u directories deep",
                      SBX_FS_WALK_OPEN_MAX);
        sbx_err_set_path(e, w->path);
        return -1;
    }
    /* A symlink followed (the root, or follow_symlinks) never through a magic link. */
    fd = agent_path_open(dfd, name,
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0), 0);
    if (fd < 0 || fstat(fd, &st) < 0) {
        int errnum = errno;
        if (fd >= 0) {
            (void)close(fd);
        }
        free(sets);
        return agent_fs_err(e, errnum, "opendir", w->path);
    }
    for (unsigned i = 0; i < w->top; i++) {
        if (w->st[i].dev == st.st_dev && w->st[i].ino == st.st_ino) {
            (void)close(fd);
            free(sets);
            return agent_fs_err(e, ELOOP, "walk into a directory already on the path", w->path);
        }
    }
    d = fdopendir(fd);
    if (d == NULL) {
        int errnum = errno;
        (void)close(fd);
        free(sets);
        return agent_fs_err(e, errnum, "opendir", w->path);
    }
    w->st[w->top] = (struct wframe){
        .dir = d,
        .plen = strlen(w->path),
        .depth = depth,
        .dev = st.st_dev,
        .ino = st.st_ino,
        .sets = sets,
    };
    w->top++;
    return 0;
}

/* The root entry of a walk: reported first when include_dirs, then descended into. */
static bool walk_root(struct agent_fswalk *w)
{
    struct sbx_err e;
    const char *name = w->path + w->rootlen;
    struct stat st;
    bool reported = false;
    const char *type;

    w->root_done = true;
    while (name > w->path && name[-1] != '/') {
        name--;
    }
    if (*name == '\0') {
        name = w->path; /* "/" or "dir/" */
    }
    type = agent_path_stat(w->rootabs, false, &st) == 0 ? agent_fs_type_name(st.st_mode) : "dir";
    if (w->inc_dirs && (w->nmatch == 0 || regs_match(w->match, w->nmatch, w->path))) {
        walk_entry(w, name, type, 0, NULL);
        reported = true;
    }
    if (w->max_depth > 0 && walk_push(w, AT_FDCWD, w->rootabs, false, 0, NULL, &e) < 0) {
        if (reported) {
            msgpack_sbuffer_clear(&w->ent);
        }
        walk_entry(w, name, type, 0, &e);
        reported = true;
    }
    return reported;
}

/*
 * Advance the traversal until one entry is packed into w->ent (1), the walk is over (0,
 * w->done), or a batch of directory entries was read without one to report (-1: yield).
 */
static int walk_next(struct agent_fswalk *w)
{
    struct sbx_err e;

    if (!w->root_done && !w->glob && walk_root(w)) {
        return 1;
    }
    while (w->top > 0) {
        struct wframe *f = &w->st[w->top - 1];
        struct dirent *de;
        const char *type;
        size_t nl;
        unsigned depth = f->depth + 1;
        bool isdir, islink, descend = false, report;
        uint8_t *sets = NULL;
        struct stat st;

        if (++w->scanned > 4 * SBX_FS_WALK_BATCH || uv_hrtime() > w->slice_end) {
            return -1;
        }
        de = agent_path_readdir(f->dir);
        if (de == NULL) {
            int errnum = errno;
            w->path[f->plen] = '\0';
            (void)closedir(f->dir);
            free(f->sets);
            w->top--;
            if (errnum != 0) {
                const char *slash = strrchr(w->path, '/');
                agent_fs_err(&e, errnum, "readdir", w->path);
                walk_entry(w, slash != NULL && slash[1] != '\0' ? slash + 1 : w->path, "dir",
                           f->depth, &e);
                return 1;
            }
            if (w->top > 0) {
                w->path[w->st[w->top - 1].plen] = '\0';
            }
            continue;
        }
        nl = strlen(de->d_name);
        if (f->plen + 1 + nl >= sizeof(w->path)) {
            continue; /* cannot be named in a path the protocol carries */
        }
        if (f->plen > 0 && w->path[f->plen - 1] != '/') {
            w->path[f->plen] = '/';
            memcpy(w->path + f->plen + 1, de->d_name, nl + 1);
        } else {
            memcpy(w->path + f->plen, de->d_name, nl + 1);
        }
        type = agent_fs_dtype_name(de->d_type);
        if (type == NULL) {
            type = fstatat(dirfd(f->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
                       ? agent_fs_type_name(st.st_mode)
                       : "unknown";
        }
        isdir = strcmp(type, "dir") == 0;
        islink = strcmp(type, "symlink") == 0;

        if (!w->glob) {
            if (w->nskip > 0 && regs_match(w->skip, w->nskip, w->path)) {
                continue;
            }
            report = isdir ? w->inc_dirs : islink ? w->inc_links : w->inc_files;
            if (report && !isdir && !ext_ok(w, de->d_name)) {
                report = false;
            }
            if (report && w->nmatch > 0 && !regs_match(w->match, w->nmatch, w->path)) {
                report = false;
            }
            if (depth < w->max_depth) {
                descend = isdir || (islink && w->follow &&
                                    agent_path_stat_at(dirfd(f->dir), de->d_name, true, &st) == 0 &&
                                    S_ISDIR(st.st_mode));
            }
        } else {
            /* Glob: advance the pattern and every exclude by this component. */
            size_t off = 0;
            bool alive, loopable, excluded = false;
            sets = malloc(w->setstotal);
            if (sets == NULL) {
                continue;
            }
            alive = agent_glob_step(&w->pat, f->sets, de->d_name, true, sets);
            off = w->pat.setsz;
            for (unsigned i = 0; i < w->nexcl; i++) {
                (void)agent_glob_step(&w->excl[i], f->sets + off, de->d_name, true, sets + off);
                excluded |= agent_glob_matched(&w->excl[i], sets + off);
                off += w->excl[i].setsz;
            }
            if (excluded) {
                free(sets);
                continue;
            }
            report = agent_glob_matched(&w->pat, sets) && (w->inc_dirs || !isdir);
            if (islink && alive && agent_path_stat_at(dirfd(f->dir), de->d_name, true, &st) == 0 &&
                S_ISDIR(st.st_mode)) {
                /* A link reached only through `**` is followed only with follow_symlinks. */
                uint8_t *strict = w->follow ? NULL : malloc(w->pat.setsz);
                loopable =
                    w->follow || (strict != NULL &&
                                  agent_glob_step(&w->pat, f->sets, de->d_name, false, strict));
                if (strict != NULL && loopable) {
                    memcpy(sets, strict, w->pat.setsz);
                }
                free(strict);
                descend = loopable;
            } else {
                descend = isdir && alive;
            }
            if (!descend) {
                free(sets);
                sets = NULL;
            }
        }
        if (descend && walk_push(w, dirfd(f->dir), de->d_name, !islink, depth, sets, &e) < 0) {
            walk_entry(w, de->d_name, type, depth, &e);
            return 1;
        }
        if (report) {
            walk_entry(w, de->d_name, type, depth, NULL);
            return 1;
        }
    }
    w->done = true;
    return 0;
}

/* Send what is buffered if the credit covers it. */
static bool walk_flush(struct agent_fswalk *w)
{
    if (w->out.size == 0) {
        return true;
    }
    if (agent_stream_writable(w->s) < w->out.size) {
        return false;
    }
    agent_stream_send_copy(w->s, w->out.data, (uint32_t)w->out.size);
    msgpack_sbuffer_clear(&w->out);
    return true;
}

static void walk_idle_cb(uv_idle_t *h)
{
    struct agent_fswalk *w = h->data;
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    unsigned budget = SBX_FS_WALK_BATCH;
    struct sbx_err err;

    w->scanned = 0;
    w->slice_end = uv_hrtime() + WALK_SLICE_NS;
    while (budget > 0) {
        uint32_t room = agent_stream_writable(w->s);
        if (room > SBX_STREAM_CHUNK_MAX) {
            room = SBX_STREAM_CHUNK_MAX;
        }
        if (w->ent.size > 0) {
            if (w->out.size + w->ent.size <= room) {
                if (msgpack_sbuffer_write(&w->out, w->ent.data, w->ent.size) != 0) {
                    budget = 0;
                    break;
                }
                msgpack_sbuffer_clear(&w->ent);
            } else {
                /* Only the reads act as the walk's identity: sending does not. */
                agent_ident_leave(&sc);
                if (w->out.size > 0 && walk_flush(w)) {
                    continue;
                }
                (void)uv_idle_stop(&w->idle); /* ready() restarts us when credit arrives */
                return;
            }
        }
        if (w->done) {
            agent_ident_leave(&sc);
            if (!walk_flush(w)) {
                (void)uv_idle_stop(&w->idle);
                return;
            }
            agent_stream_end(w->s, NULL, false);
            w->s = NULL;
            walk_free(w);
            return;
        }
        if (!sc.active && agent_ident_enter_err(&w->who, &sc, &err) < 0) {
            agent_stream_end(w->s, &err, false);
            w->s = NULL;
            walk_free(w);
            return;
        }
        switch (walk_next(w)) {
        case 1:
            budget--;
            break;
        case 0:
            break; /* done: ended above, after the last entry is out */
        default:
            budget = 0; /* read a batch without a match: yield */
            break;
        }
    }
    agent_ident_leave(&sc);
    if (!walk_flush(w)) {
        (void)uv_idle_stop(&w->idle);
    }
}

static void walk_ready(struct agent_stream *s)
{
    struct agent_fswalk *w = s->owner;

    (void)uv_idle_start(&w->idle, walk_idle_cb);
}

static void walk_gone(struct agent_stream *s, bool cancelled)
{
    struct agent_fswalk *w = s->owner;

    w->s = NULL;
    walk_free(w);
}

static const struct agent_stream_ops walk_ops = {
    .ready = walk_ready,
    .gone = walk_gone,
};

static uint32_t regex_sat(uint64_t v)
{
    return v > REGEX_COST_SAT ? REGEX_COST_SAT : (uint32_t)v;
}

/* The end of the bracket expression opening at @p, as regcomp reads one: a ']' first (after an
 * optional '^') is a member, "[:", "[." and "[=" open a name that ends at ":]", ".]", "=]".
 * NULL when it does not end. */
static const char *regex_bracket_end(const char *p)
{
    p += p[1] == '^' ? 2 : 1;
    if (*p == ']') {
        p++;
    }
    for (; *p != '\0' && *p != ']'; p++) {
        if (p[0] == '[' && (p[1] == ':' || p[1] == '.' || p[1] == '=')) {
            const char *q = strstr(p + 2, p[1] == ':' ? ":]" : p[1] == '.' ? ".]" : "=]");
            if (q == NULL) {
                return NULL;
            }
            p = q + 1;
        }
    }
    return *p == ']' ? p : NULL;
}

/* A counted repetition "{m}", "{m,}", "{m,n}" or "{,n}" at *@p ('{'): its bounds, and *@p moved
 * to its '}'. False when it is none (regcomp refuses the pattern then). */
static bool regex_interval(const char **p, uint64_t *lo, uint64_t *hi)
{
    const char *q = *p + 1;
    bool have_lo = false;

    *lo = 0;
    for (; *q >= '0' && *q <= '9'; q++, have_lo = true) {
        *lo = *lo > RE_DUP_MAX ? *lo : *lo * 10 + (uint64_t)(*q - '0');
    }
    if (*q == '}' && have_lo) {
        *hi = *lo;
    } else if (*q == ',') {
        bool have_hi = false;
        *hi = 0;
        for (q++; *q >= '0' && *q <= '9'; q++, have_hi = true) {
            *hi = *hi > RE_DUP_MAX ? *hi : *hi * 10 + (uint64_t)(*q - '0');
        }
        if (*q != '}') {
            return false;
        }
        if (!have_hi) {
            *hi = REGEX_UNBOUNDED;
        }
    } else {
        return false;
    }
    *p = q;
    return true;
}

struct regex_frame {
    struct regex_cost sum;  /* what the group holds before its last atom */
    struct regex_cost last; /* the last atom: what a following repetition applies to */
};

static void regex_commit(struct regex_frame *f)
{
    f->sum.atoms = regex_sat((uint64_t)f->sum.atoms + f->last.atoms);
    f->sum.branches = regex_sat((uint64_t)f->sum.branches + f->last.branches);
    f->last = (struct regex_cost){ 0, 0 };
}

/* The last atom repeated {@lo,@hi}, as regcomp builds it: max(@hi, @lo + 1 when unbounded)
 * copies, each optional copy (or the starred one) a branch. */
static void regex_repeat(struct regex_frame *f, uint64_t lo, uint64_t hi)
{
    /* {0} (or {0,0}) leaves nothing in the final pattern, but regcomp builds its operand first:
     * counted once, or ((0{0,335}{2335}){335}){0} cost nothing and took regcomp 2 GB. */
    uint64_t copies = hi == REGEX_UNBOUNDED ? lo + 1 : hi > lo ? hi : lo > 0 ? lo : 1;
    uint64_t forks = hi == REGEX_UNBOUNDED ? 1 : hi > lo ? hi - lo : 0;

    f->last.atoms = regex_sat(copies * f->last.atoms);
    f->last.branches = regex_sat(copies * f->last.branches + forks);
}

/* The cost of the pattern @re as regcomp (REG_EXTENDED) would build it: its atoms and branches
 * with every counted repetition written out (see WALK_REGEX_BRANCHES). Taken before regcomp,
 * which spends as much: ((a{1,100}){1,100}){1,100} took it 1 s and 1.2 GB. A pattern regcomp
 * refuses may be counted short. */
static struct regex_cost regex_cost(const char *re)
{
    size_t len = strlen(re), depth = 0;
    struct regex_frame *st = calloc(len + 1, sizeof(*st)); /* one per '(' at most, and the top */
    struct regex_cost c = { REGEX_COST_SAT, REGEX_COST_SAT };
    uint64_t lo, hi;

    if (st == NULL) {
        return c;
    }
    for (const char *p = re; *p != '\0'; p++) {
        struct regex_frame *f = &st[depth];
        switch (*p) {
        case '(':
            regex_commit(f);
            st[++depth] = (struct regex_frame){ { 0, 0 }, { 0, 0 } };
            break;
        case ')':
            regex_commit(f);
            if (depth == 0) {
                f->last = (struct regex_cost){ 1, 0 }; /* unmatched: an ordinary ')' */
                break;
            }
            c = f->sum;
            f = &st[--depth];
            regex_commit(f);
            f->last = (struct regex_cost){ regex_sat((uint64_t)c.atoms + 1), c.branches };
            break;
        case '|':
            regex_commit(f);
            f->sum.branches = regex_sat((uint64_t)f->sum.branches + 1);
            break;
        case '*':
        case '?':
        case '+':
            regex_repeat(f, *p == '+', *p == '?' ? 1 : REGEX_UNBOUNDED);
            break;
        case '{':
            if (regex_interval(&p, &lo, &hi)) {
                regex_repeat(f, lo, hi);
                break;
            }
            regex_commit(f);
            f->last = (struct regex_cost){ 1, 0 };
            break;
        case '[':
            if ((p = regex_bracket_end(p)) == NULL) {
                p = re + len - 1; /* regcomp refuses it: what is counted will do */
            }
            regex_commit(f);
            f->last = (struct regex_cost){ 1, 0 };
            break;
        case '\\':
            p += p[1] != '\0'; /* an escaped character, or a GNU operator (\w, \b): one atom */
            regex_commit(f);
            f->last = (struct regex_cost){ 1, 0 };
            break;
        default:
            regex_commit(f);
            f->last = (struct regex_cost){ 1, 0 };
            break;
        }
    }
    while (depth > 0) { /* an open group: regcomp refused it; counted all the same */
        regex_commit(&st[depth]);
        regex_commit(&st[depth - 1]);
        st[depth - 1].last = st[depth].sum;
        depth--;
    }
    regex_commit(&st[0]);
    c = st[0].sum;
    free(st);
    return c;
}

/* Read the regex list @key into *@out (*@n of them), adding their cost to *@spent: refused when
 * the walk's patterns together cost more than WALK_REGEX_BRANCHES allows. */
static int regs_param(const msgpack_object *params, const char *key, regex_t **out, unsigned *n,
                      struct regex_cost *spent, struct sbx_err *err)
{
    char **v = NULL;
    size_t k = 0;

    if (agent_strv_param(params, key, SBX_FS_PATTERNS_MAX, SBX_FS_REGEX_MAX, AGENT_STRV_NONEMPTY,
                         &v, &k, err) < 0) {
        return -1;
    }
    if (v == NULL) {
        return 0;
    }
    *out = calloc(k, sizeof(**out));
    if (*out == NULL) {
        agent_strv_free(v);
        return sbx_err_oom(err);
    }
    for (unsigned i = 0; i < k; i++) {
        struct regex_cost c;
        int r;

        for (const char *q = v[i]; *q != '\0'; q++) {
            if (q[0] == '\\' && q[1] >= '1' && q[1] <= '9') {
                /* Back-references make matching exponential in glibc: refused. */
                sbx_err_param(err, key, "%s[%u]: back-references are not supported", key, i);
                (void)snprintf(err->field, sizeof(err->field), "%s[%u]", key, i);
                agent_strv_free(v);
                return -1;
            }
            if (q[0] == '\\' && q[1] != '\0') {
                q++;
            }
        }
        c = regex_cost(v[i]);
        spent->atoms = regex_sat((uint64_t)spent->atoms + c.atoms);
        spent->branches = regex_sat((uint64_t)spent->branches + c.branches);
        if (spent->atoms > SBX_FS_REGEX_MAX || spent->branches > WALK_REGEX_BRANCHES) {
            sbx_err_param(err, key,
                          "%s[%u]: too complex: match and skip may hold %u atoms and %u of ?, "
                          "*, +, | and optional {m,n} copies together, counted repetitions "
                          "written out",
                          key, i, SBX_FS_REGEX_MAX, WALK_REGEX_BRANCHES);
            (void)snprintf(err->field, sizeof(err->field), "%s[%u]", key, i);
            agent_strv_free(v);
            return -1;
        }
        r = regcomp(&(*out)[i], v[i], REG_EXTENDED | REG_NOSUB);
        if (r != 0) {
            char msg[128];
            (void)regerror(r, &(*out)[i], msg, sizeof(msg));
            sbx_err_param(err, key, "%s[%u]: %s", key, i, msg);
            (void)snprintf(err->field, sizeof(err->field), "%s[%u]", key, i);
            agent_strv_free(v);
            return -1;
        }
        *n = i + 1;
    }
    agent_strv_free(v);
    return 0;
}

static struct agent_fswalk *walk_new(struct agent_conn *c)
{
    struct agent_fswalk *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        return NULL;
    }
    w->conn = c;
    w->inc_files = w->inc_dirs = w->inc_links = true;
    w->max_depth = UINT64_MAX;
    msgpack_sbuffer_init(&w->out);
    msgpack_sbuffer_init(&w->ent);
    msgpack_packer_init(&w->pk, &w->ent, msgpack_sbuffer_write);
    (void)uv_idle_init(c->a->loop, &w->idle);
    w->idle.data = w;
    return w;
}

/*
 * Check the root is a directory we can open, create the stream, reply and start: AGENT_REPLIED,
 * or -1 with @err and @w freed.
 */
static int walk_start(struct agent_conn *c, const struct sbx_msg *m, struct agent_fswalk *w,
                      struct sbx_err *err)
{
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    msgpack_packer *pk;

    /* The stream cap before the file system (PROTOCOL.md §7.2); the stream is made last. */
    if (agent_ident_param(c->a, m->params, &w->who, err) < 0 ||
        agent_stream_reserve(c, 1, err) < 0) {
        walk_free(w);
        return -1;
    }
    if (agent_ident_enter_err(&w->who, &sc, err) < 0 ||
        agent_path_check_dir(w->rootabs, w->glob ? "glob" : "walk", err) < 0) {
        walk_free(w);
        return -1;
    }
    if (w->glob) {
        /* The root's position sets: every pattern at its start. */
        uint8_t *sets = calloc(1, w->setstotal);
        size_t off = w->pat.setsz;
        if (sets == NULL) {
            sbx_err_oom(err);
            walk_free(w);
            return -1;
        }
        agent_glob_start(&w->pat, sets);
        for (unsigned i = 0; i < w->nexcl; i++) {
            agent_glob_start(&w->excl[i], sets + off);
            off += w->excl[i].setsz;
        }
        w->root_done = true;
        if (walk_push(w, AT_FDCWD, w->rootabs, false, 0, sets, err) < 0) {
            walk_free(w);
            return -1;
        }
        w->st[0].plen = w->rootlen;
    }
    agent_ident_leave(&sc);
    w->s = agent_stream_new_ops(c, AGENT_STREAM_OUT, &walk_ops, w, err);
    if (w->s == NULL) {
        walk_free(w);
        return -1;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "stream", w->s->id);
    agent_conn_send(c);
    (void)uv_idle_start(&w->idle, walk_idle_cb);
    return AGENT_REPLIED;
}

int agent_fs_walk(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fswalk *w = walk_new(c);
    struct regex_cost spent = { 0, 0 };

    if (w == NULL) {
        return sbx_err_oom(err);
    }
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, w->rootabs, err) < 0 ||
        sbx_param_bstr(m->params, "path", SBX_REQUIRED, w->path, AGENT_FS_PATH_BUF, err) < 0 ||
        sbx_param_u64(m->params, "max_depth", SBX_OPTIONAL, 0, UINT64_MAX, &w->max_depth, err) <
            0 ||
        sbx_param_bool(m->params, "include_files", SBX_OPTIONAL, &w->inc_files, err) < 0 ||
        sbx_param_bool(m->params, "include_dirs", SBX_OPTIONAL, &w->inc_dirs, err) < 0 ||
        sbx_param_bool(m->params, "include_symlinks", SBX_OPTIONAL, &w->inc_links, err) < 0 ||
        sbx_param_bool(m->params, "follow_symlinks", SBX_OPTIONAL, &w->follow, err) < 0 ||
        agent_strv_param(m->params, "exts", SBX_FS_PATTERNS_MAX, SBX_FS_NAME_MAX,
                         AGENT_STRV_NONEMPTY, &w->exts, NULL, err) < 0 ||
        regs_param(m->params, "match", &w->match, &w->nmatch, &spent, err) < 0 ||
        regs_param(m->params, "skip", &w->skip, &w->nskip, &spent, err) < 0) {
        walk_free(w);
        return -1;
    }
    w->rootlen = strlen(w->path);
    return walk_start(c, m, w, err);
}

int agent_fs_glob(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fswalk *w = walk_new(c);
    char pattern[AGENT_FS_PATH_BUF];
    char **excl = NULL;
    int r;

    if (w == NULL) {
        return sbx_err_oom(err);
    }
    w->glob = true;
    w->max_depth = SBX_FS_WALK_OPEN_MAX;
    if (sbx_param_bstr(m->params, "pattern", SBX_REQUIRED, pattern, sizeof(pattern), err) < 0 ||
        (r = agent_fs_path_param(m->params, "root", SBX_OPTIONAL, w->rootabs, err)) < 0 ||
        sbx_param_bool(m->params, "include_dirs", SBX_OPTIONAL, &w->inc_dirs, err) < 0 ||
        sbx_param_bool(m->params, "follow_symlinks", SBX_OPTIONAL, &w->follow, err) < 0 ||
        agent_strv_param(m->params, "exclude", SBX_FS_PATTERNS_MAX, SBX_PATH_MAX,
                         AGENT_STRV_NONEMPTY, &excl, NULL, err) < 0 ||
        agent_glob_compile(&w->pat, pattern, WALK_GLOB, "pattern", err) < 0) {
        agent_strv_free(excl);
        walk_free(w);
        return -1;
    }
    if (pattern[0] == '/') {
        memcpy(w->rootabs, "/", 2);
        memcpy(w->path, "/", 2);
    } else if (r == 0) {
        (void)sbx_param_bstr(m->params, "root", SBX_OPTIONAL, w->path, AGENT_FS_PATH_BUF, err);
    } else if (sbx_param_bstr(m->params, "cwd", SBX_OPTIONAL, w->rootabs, AGENT_FS_PATH_BUF, err) ==
                   0 &&
               w->rootabs[0] == '/') {
        memcpy(w->path, w->rootabs, strlen(w->rootabs) + 1);
    } else {
        memcpy(w->rootabs, "/", 2);
        memcpy(w->path, "/", 2);
    }
    w->setstotal = w->pat.setsz;
    for (char **e = excl; e != NULL && *e != NULL; e++) {
        w->nexcl++;
    }
    w->excl = calloc(w->nexcl + 1, sizeof(*w->excl));
    for (unsigned i = 0; w->excl != NULL && i < w->nexcl; i++) {
        if (agent_glob_compile(&w->excl[i], excl[i], WALK_GLOB, "exclude", err) < 0) {
            (void)snprintf(err->field, sizeof(err->field), "exclude[%u]", i);
            w->nexcl = i;
            agent_strv_free(excl);
            walk_free(w);
            return -1;
        }
        w->setstotal += w->excl[i].setsz;
    }
    agent_strv_free(excl);
    if (w->excl == NULL) {
        sbx_err_oom(err);
        walk_free(w);
        return -1;
    }
    w->rootlen = strlen(w->path);
    return walk_start(c, m, w, err);
}
