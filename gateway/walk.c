/*
 * walk and expandGlob (docs/GATEWAY.md): @std/fs 1.0.23 semantics on entries streamed
 * by the agent's fs.walk (PROTOCOL.md §17.4), with the JavaScript regular expressions matched
 * here with PCRE2. Each result is one JSON WalkEntry per $sandbox.stream.enqueue on a server
 * stream this file opens and ends itself.
 *
 * walk asks the agent for every entry (its exts/match/skip are POSIX and skip directories only
 * by their own filters) and applies @std's include(): exts, match and skip on the joined path,
 * includeFiles/Dirs/Symlinks, and a skipped directory's subtree dropped (the agent still reads
 * it). followSymlinks: the agent descends links to directories; a followed link is reported as a
 * directory when entries below it follow, else as the link (as @std reports a link to a file).
 * canonicalize is not applied (paths through a followed link keep the link's name).
 *
 * expandGlob walks once from the glob's fixed prefix (as deep as the glob has segments, or
 * unlimited with **), matches each path against globToRegExp of the whole absolute glob
 * (when the glob ends in **, directories also with a '/' appended, which lets it match the
 * directory it starts at, as @std's walk root does), drops `exclude` matches (pruning directories),
 * then sorts by path and sends. ".." segments in the glob's variable part are not resolved.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "walk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "m_fs.h"

/* --- a small string builder ------------------------------------------------------------------ */

struct sb {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_addn(struct sb *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap < 64 ? 64 : b->cap;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_add(struct sb *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_addc(struct sb *b, char c)
{
    sb_addn(b, &c, 1);
}

/* The string, or NULL (freed) when memory ran out. */
static char *sb_take(struct sb *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    if (b->p == NULL) {
        return strdup("");
    }
    return b->p;
}

/* --- JavaScript regular expressions ---------------------------------------------------------- */

pcre2_code *gw_js_regex(const char *src, size_t len, const char *flags, char *why, size_t whylen)
{
    uint32_t opt = PCRE2_UTF | PCRE2_ALT_BSUX | PCRE2_MATCH_UNSET_BACKREF | PCRE2_ALLOW_EMPTY_CLASS;
    uint32_t extra = 0;
    bool multiline = false;
    char seen[16] = "";
    size_t nseen = 0;
    for (const char *f = flags != NULL ? flags : ""; *f != '\0'; f++) {
        if (strchr(seen, *f) != NULL || nseen + 1 >= sizeof(seen)) {
            (void)snprintf(why, whylen, "Invalid flags supplied to RegExp constructor '%s'", flags);
            return NULL;
        }
        seen[nseen++] = *f;
        seen[nseen] = '\0';
        switch (*f) {
        case 'i':
            opt |= PCRE2_CASELESS;
            break;
        case 'm':
            opt |= PCRE2_MULTILINE;
            multiline = true;
            break;
        case 's':
            opt |= PCRE2_DOTALL;
            break;
        case 'u':
        case 'v':
            extra |= PCRE2_EXTRA_ALT_BSUX;
            break;
        case 'y':
            opt |= PCRE2_ANCHORED;
            break;
        case 'g':
        case 'd':
            break;
        default:
            (void)snprintf(why, whylen, "Invalid flags supplied to RegExp constructor '%s'", flags);
            return NULL;
        }
    }
    if (!multiline) {
        opt |= PCRE2_DOLLAR_ENDONLY;
    }
    if (len > GW_WALK_PATTERN_MAX) {
        (void)snprintf(why, whylen, "Invalid regular expression: longer than %d bytes",
                       GW_WALK_PATTERN_MAX);
        return NULL;
    }
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (cc == NULL) {
        (void)snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (extra != 0 && pcre2_set_compile_extra_options(cc, extra) != 0) {
        pcre2_compile_context_free(cc);
        (void)snprintf(why, whylen, "out of memory");
        return NULL;
    }
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, len, opt, &ec, &off, cc);
    pcre2_compile_context_free(cc);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(ec, msg, sizeof(msg)) < 0) {
            (void)snprintf((char *)msg, sizeof(msg), "error %d", ec);
        }
        (void)snprintf(why, whylen, "Invalid regular expression: /%.*s/%s: %s (at offset %zu)",
                       (int)(len > 200 ? 200 : len), src, flags != NULL ? flags : "",
                       (const char *)msg, (size_t)off);
    }
    return re;
}

/* 1 when @re matches somewhere in @s, 0 when not, -1 on a match error (limits). */
static int rx_test(const pcre2_code *re, const char *s, pcre2_match_data *md,
                   pcre2_match_context *mc)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, mc);
    if (rc >= 0) {
        return 1;
    }
    return rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
}

/* --- globToRegExp (@std/path 1.1.4, _common/glob_to_reg_exp.js with the POSIX constants) ---- */

#define GLOB_SEP       "/+"
#define GLOB_SEP_MAYBE "/*"
#define GLOB_GLOBSTAR  "(?:[^/]*(?:/|$)+)*"
#define GLOB_WILDCARD  "[^/]*"

static bool in_set(const char *set, char c)
{
    return c != '\0' && strchr(set, c) != NULL;
}

static const char REGEXP_ESCAPE[] = "!$()*+.=?[\\^{|";
static const char RANGE_ESCAPE[] = "-\\]";

static const char *posix_class(const char *v, size_t n)
{
    static const struct {
        const char *name, *re;
    } classes[] = {
        { "alnum", "\\dA-Za-z" },
        { "alpha", "A-Za-z" },
        { "ascii", "\\x00-\\x7F" },
        { "blank", "\t " },
        { "cntrl", "\\x00-\\x1F\\x7F" },
        { "digit", "\\d" },
        { "graph", "!-~" },
        { "lower", "a-z" },
        { "print", " -~" },
        { "punct", "!\"#$%&'()*+,\\-./:;<=>?@[\\\\\\]^_\xe2\x80\x98{|}~" },
        { "space", "\\s\v" },
        { "upper", "A-Z" },
        { "word", "\\w" },
        { "xdigit", "\\dA-Fa-f" },
    };
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) {
        if (strlen(classes[i].name) == n && memcmp(classes[i].name, v, n) == 0) {
            return classes[i].re;
        }
    }
    return ""; /* an unknown class name adds nothing, as in @std */
}

char *gw_glob_to_regex(const char *glob, bool extended, bool globstar)
{
    size_t len = strlen(glob);
    if (len > GW_WALK_PATTERN_MAX) {
        return NULL;
    }
    if (len == 0) {
        return strdup("(?!)");
    }
    while (len > 1 && glob[len - 1] == '/') {
        len--;
    }
    struct sb out = { 0 };
    sb_addc(&out, '^');
    /* The group stack: '+', '@', '?', '!', '*' or 'B' (a brace). At most one entry per byte. */
    char *stack = malloc(len + 1);
    if (stack == NULL) {
        free(out.p);
        return NULL;
    }
#define AT(k) ((k) < len ? glob[(k)] : '\0')
    for (size_t j = 0; j < len;) {
        struct sb seg = { 0 };
        size_t depth = 0;
        bool in_range = false, in_escape = false, ends_with_sep = false;
        size_t i = j;
        for (; i < len && !(glob[i] == '/' && depth == 0); i++) {
            char c = glob[i];
            if (in_escape) {
                in_escape = false;
                if (in_set(in_range ? RANGE_ESCAPE : REGEXP_ESCAPE, c)) {
                    sb_addc(&seg, '\\');
                }
                sb_addc(&seg, c);
                continue;
            }
            if (c == '\\') {
                in_escape = true;
                continue;
            }
            if (c == '[') {
                if (!in_range) {
                    in_range = true;
                    sb_addc(&seg, '[');
                    if (AT(i + 1) == '!') {
                        i++;
                        sb_addc(&seg, '^');
                    } else if (AT(i + 1) == '^') {
                        i++;
                        sb_add(&seg, "\\^");
                    }
                    continue;
                } else if (AT(i + 1) == ':') {
                    size_t k = i + 1;
                    while (AT(k + 1) != '\0' && AT(k + 1) != ':') {
                        k++;
                    }
                    if (AT(k + 1) == ':' && AT(k + 2) == ']') {
                        sb_add(&seg, posix_class(glob + i + 2, k - (i + 1)));
                        i = k + 2;
                        continue;
                    }
                }
            }
            if (c == ']' && in_range) {
                in_range = false;
                sb_addc(&seg, ']');
                continue;
            }
            if (in_range) {
                sb_addc(&seg, c);
                continue;
            }
            if (c == ')' && depth > 0 && stack[depth - 1] != 'B') {
                sb_addc(&seg, ')');
                char type = stack[--depth];
                if (type == '!') {
                    sb_add(&seg, GLOB_WILDCARD);
                } else if (type != '@') {
                    sb_addc(&seg, type);
                }
                continue;
            }
            if (c == '|' && depth > 0 && stack[depth - 1] != 'B') {
                sb_addc(&seg, '|');
                continue;
            }
            if ((c == '+' || c == '@' || c == '?' || c == '!' || c == '*') && extended &&
                AT(i + 1) == '(') {
                i++;
                stack[depth++] = c;
                sb_add(&seg, c == '!' ? "(?!" : "(?:");
                continue;
            }
            if (c == '?') {
                sb_addc(&seg, '.');
                continue;
            }
            if (c == '{') {
                stack[depth++] = 'B';
                sb_add(&seg, "(?:");
                continue;
            }
            if (c == '}' && depth > 0 && stack[depth - 1] == 'B') {
                depth--;
                sb_addc(&seg, ')');
                continue;
            }
            if (c == ',' && depth > 0 && stack[depth - 1] == 'B') {
                sb_addc(&seg, '|');
                continue;
            }
            if (c == '*') {
                char prev = i > 0 ? glob[i - 1] : '\0';
                unsigned stars = 1;
                while (AT(i + 1) == '*') {
                    i++;
                    stars++;
                }
                char next = AT(i + 1);
                if (globstar && stars == 2 && (prev == '/' || prev == '\0') &&
                    (next == '/' || next == '\0')) {
                    sb_add(&seg, GLOB_GLOBSTAR);
                    ends_with_sep = true;
                } else {
                    sb_add(&seg, GLOB_WILDCARD);
                }
                continue;
            }
            if (in_set(REGEXP_ESCAPE, c)) {
                sb_addc(&seg, '\\');
            }
            sb_addc(&seg, c);
        }
        if (depth > 0 || in_range || in_escape) {
            /* A parse failure: this segment's characters are taken literally. */
            free(seg.p);
            memset(&seg, 0, sizeof(seg));
            for (size_t k = j; k < i; k++) {
                if (in_set(REGEXP_ESCAPE, glob[k])) {
                    sb_addc(&seg, '\\');
                }
                sb_addc(&seg, glob[k]);
            }
            ends_with_sep = false;
        }
        if (seg.oom) {
            out.oom = true;
        } else if (seg.p != NULL) {
            sb_add(&out, seg.p);
        }
        free(seg.p);
        if (!ends_with_sep) {
            sb_add(&out, i < len ? GLOB_SEP : GLOB_SEP_MAYBE);
        }
        while (i < len && glob[i] == '/') {
            i++;
        }
        j = i;
    }
#undef AT
    free(stack);
    sb_addc(&out, '$');
    return sb_take(&out);
}

int gw_is_glob(const char *s)
{
    static const char re_src[] = "\\\\(.)|(^!|\\*|\\?|[\\].+)]\\?|\\[[^[\\\\\\]]+\\]|"
                                 "\\{[^{\\\\}]+\\}|\\(\\?[:!=][^\\\\)]+\\)|"
                                 "\\([^(|]+\\|[^\\\\)]+\\)|@\\([^)]+\\))";
    char why[256];
    if (s[0] == '\0') {
        return 0;
    }
    pcre2_code *re = gw_js_regex(re_src, sizeof(re_src) - 1, "", why, sizeof(why));
    if (re == NULL) {
        return -1;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (md == NULL) {
        pcre2_code_free(re);
        return -1;
    }
    int result = 0;
    size_t pos = 0, len = strlen(s);
    while (pos <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s + pos, len - pos, 0, 0, md, NULL);
        if (rc < 0) {
            result = rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (rc > 2 && ov[4] != PCRE2_UNSET) {
            result = 1;
            break;
        }
        size_t idx = ov[1];
        if (rc > 1 && ov[2] != PCRE2_UNSET) {
            char open = s[pos + ov[2]];
            char close = open == '{' ? '}' : open == '(' ? ')' : open == '[' ? ']' : '\0';
            if (close != '\0') {
                const char *n = strchr(s + pos + idx, close);
                if (n != NULL) {
                    idx = (size_t)(n - (s + pos)) + 1;
                }
            }
        }
        if (idx == 0) {
            idx = 1; /* an empty match cannot happen with this pattern; never loop */
        }
        pos += idx;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return result;
}

char *gw_path_normalize(const char *p)
{
    size_t len = strlen(p);
    bool abs = len > 0 && p[0] == '/';
    bool trailing = len > 0 && p[len - 1] == '/';
    /* Segments are kept as (start, length) pairs into @p. */
    size_t *segs = malloc((len / 2 + 2) * 2 * sizeof(size_t));
    if (segs == NULL) {
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        while (i < len && p[i] == '/') {
            i++;
        }
        size_t st = i;
        while (i < len && p[i] != '/') {
            i++;
        }
        size_t sl = i - st;
        if (sl == 0 || (sl == 1 && p[st] == '.')) {
            continue;
        }
        if (sl == 2 && p[st] == '.' && p[st + 1] == '.') {
            if (n > 0 && !(segs[2 * (n - 1) + 1] == 2 && p[segs[2 * (n - 1)]] == '.' &&
                           p[segs[2 * (n - 1)] + 1] == '.')) {
                n--;
                continue;
            }
            if (abs) {
                continue;
            }
        }
        segs[2 * n] = st;
        segs[2 * n + 1] = sl;
        n++;
    }
    struct sb b = { 0 };
    if (abs) {
        sb_addc(&b, '/');
    }
    for (size_t k = 0; k < n; k++) {
        if (k > 0) {
            sb_addc(&b, '/');
        }
        sb_addn(&b, p + segs[2 * k], segs[2 * k + 1]);
    }
    free(segs);
    if (n == 0 && !abs) {
        sb_addc(&b, '.');
    }
    if (n > 0 || !abs) {
        if (trailing && !(n == 0 && abs)) {
            sb_addc(&b, '/');
        }
    }
    return sb_take(&b);
}

/* --- the walk state -------------------------------------------------------------------------- */

/* One expandGlob match: its path, then its name, in one allocation. */
struct gres {
    const char *name;
    bool f, d, l;
    char path[];
};

struct walkst {
    int refs; /* the call's, the agent sink's, the cancel hook's */
    struct gw_call *call;
    struct gw_session *s;
    uint64_t sid;
    bool hooked, cancelled, finished;
    bool glob;
    /* @std walk options */
    bool inc_files, inc_dirs, inc_symlinks, follow;
    char **exts;
    size_t nexts;
    pcre2_code **match, **skip;
    size_t nmatch, nskip;
    bool has_match;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    char *raw_root;              /* the root as the SDK gave it (include() on the root) */
    char *agent_root;            /* the path the agent walks (its entry paths start with it) */
    char *base;                  /* what entry paths are joined to ("" for ".") */
    char *root_path;             /* the root entry's path: normalize(raw_root) */
    char *skip_prefix;           /* a directory whose subtree is dropped */
    char *pend_path, *pend_name; /* a followed symlink not yet known to be a directory */
    /* expandGlob */
    pcre2_code *glob_rx;
    bool trailing_sep, glob_inc_dirs;
    bool star_tail;    /* the glob ends in a globstar: the directory it starts at matches too */
    struct gres **res; /* the matches, sorted before the first is sent */
    size_t nres, rescap, res_bytes, res_next;
    bool res_over; /* past GW_FS_GLOB_MAX or GW_FS_GLOB_BYTES */
    bool sorted, drain_hooked;
    bool turn; /* holds st->call (and its turn) until the matches are sent */
    int64_t glob_depth;
    /* The agent's stream, while this walk is its sink (holding the sink's reference). Entries
     * a loop turn had no time for wait in pbuf[poff..plen), their chunks' @held bytes not yet
     * acknowledged; the stream's end waits behind them (end_seen). */
    uint32_t asid;
    bool collecting, end_seen;
    json_t *end_err; /* the stream failed behind entries that wait: sent after them */
    uint8_t *pbuf;
    size_t plen, poff, pcap, held;
    struct walkst *qnext; /* in the gateway's walk queue (queued) */
    bool queued;
};

static void walk_unref(struct walkst *st)
{
    if (--st->refs > 0) {
        return;
    }
    for (size_t i = 0; i < st->nexts; i++) {
        free(st->exts[i]);
    }
    free(st->exts);
    for (size_t i = 0; i < st->nmatch; i++) {
        pcre2_code_free(st->match[i]);
    }
    free(st->match);
    for (size_t i = 0; i < st->nskip; i++) {
        pcre2_code_free(st->skip[i]);
    }
    free(st->skip);
    pcre2_code_free(st->glob_rx);
    pcre2_match_data_free(st->md);
    pcre2_match_context_free(st->mc);
    free(st->raw_root);
    free(st->agent_root);
    free(st->base);
    free(st->root_path);
    free(st->skip_prefix);
    free(st->pend_path);
    free(st->pend_name);
    for (size_t i = st->res_next; i < st->nres; i++) {
        free(st->res[i]);
    }
    free(st->res);
    free(st->pbuf);
    json_decref(st->end_err);
    free(st);
}

static void walk_call_gone(void *p)
{
    struct walkst *st = p;
    st->call = NULL;
    walk_unref(st);
}

static void sink_release(struct walkst *st, bool cancel);
static void glob_unhook(struct walkst *st);
static void walk_finish(struct walkst *st, json_t *err);

/* The client cancelled (or the session ends): the agent's walk is cancelled now, not at its
 * next chunk, which entries waiting for a turn would hold back for ever. */
static void walk_cancel_cb(void *user)
{
    struct walkst *st = user;
    st->hooked = false;
    st->refs++;
    if (!st->finished && gw_session_agent_gone(st->s)) {
        /* Not the client's cancel: the agent link ended after the stream's end came (entries
         * still waited for their turn) or while expandGlob's matches waited for room. The
         * client is told, as a relayed stream's is. */
        struct sbx_err e;
        sbx_err_set(&e, SBX_E_EOF, "the agent connection ended");
        walk_finish(st, gw_errobj_sbx(&e, "walk", st->raw_root));
    }
    st->cancelled = true;
    sink_release(st, true);
    glob_unhook(st);
    walk_finish(st, NULL); /* sends nothing now: expandGlob's turn ends */
    walk_unref(st);
    walk_unref(st);
}

static void walk_oom(struct gw_call *call)
{
    gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
}

/* A new state on @call (its data). NULL having answered the call. */
static struct walkst *walk_new(struct gw_call *call, bool glob)
{
    struct walkst *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        walk_oom(call);
        return NULL;
    }
    st->refs = 1;
    st->call = call;
    st->s = call->s;
    st->glob = glob;
    call->data = st;
    call->data_free = walk_call_gone;
    st->mc = pcre2_match_context_create(NULL);
    st->md = pcre2_match_data_create(1, NULL);
    if (st->mc == NULL || st->md == NULL || pcre2_set_depth_limit(st->mc, GW_RX_DEPTH) != 0 ||
        pcre2_set_heap_limit(st->mc, 65536) != 0) {
        walk_oom(call);
        return NULL;
    }
    return st;
}

/* --- sending --------------------------------------------------------------------------------- */

static void send_entry_json(struct walkst *st, json_t *entry)
{
    char *txt = entry != NULL ? json_dumps(entry, JSON_COMPACT) : NULL;
    json_decref(entry);
    size_t n;
    char *b = txt != NULL ? gw_fs_b64_encode(txt, strlen(txt), &n) : NULL;
    free(txt);
    if (b == NULL) {
        return; /* out of memory: the entry is lost, the stream goes on */
    }
    gw_session_notify(st->s, "$sandbox.stream.enqueue",
                      json_pack("{s:I,s:s}", "streamId", (json_int_t)st->sid, "data", b));
    free(b);
}

static json_t *entry_json(const char *path, const char *name, bool f, bool d, bool l)
{
    return json_pack("{s:s,s:s,s:b,s:b,s:b}", "path", path, "name", name, "isFile", f,
                     "isDirectory", d, "isSymlink", l);
}

/* expandGlob's turn ends (the call held since glob_start is let go). The caller holds a
 * reference of its own: the call's goes with it. */
static void turn_end(struct walkst *st)
{
    if (st->turn && st->call != NULL) {
        st->turn = false;
        gw_call_release(st->call);
    }
}

/* End the SDK stream (normally, or with @err), once. */
static void walk_finish(struct walkst *st, json_t *err)
{
    if (st->finished) {
        json_decref(err);
        return;
    }
    st->finished = true;
    if (!st->cancelled) {
        if (err != NULL) {
            gw_session_notify(
                st->s, "$sandbox.stream.error",
                json_pack("{s:I,s:o}", "streamId", (json_int_t)st->sid, "error", err));
        } else {
            gw_session_notify(st->s, "$sandbox.stream.end",
                              json_pack("{s:I}", "streamId", (json_int_t)st->sid));
        }
    } else {
        json_decref(err);
    }
    if (st->hooked) {
        st->hooked = false;
        gw_session_off_cancel(st->s, st->sid);
        walk_unref(st); /* the caller still holds its own reference */
    }
    turn_end(st);
}

/* --- @std include() and the entry pipeline --------------------------------------------------- */

/* 1 included, 0 not, -1 a match error. */
static int any_match(struct walkst *st, pcre2_code **v, size_t n, const char *path)
{
    for (size_t i = 0; i < n; i++) {
        int r = rx_test(v[i], path, st->md, st->mc);
        if (r != 0) {
            return r;
        }
    }
    return 0;
}

static int include(struct walkst *st, const char *path, bool filters)
{
    if (filters && st->nexts > 0) {
        size_t pl = strlen(path);
        bool ok = false;
        for (size_t i = 0; i < st->nexts && !ok; i++) {
            size_t el = strlen(st->exts[i]);
            ok = pl >= el && memcmp(path + pl - el, st->exts[i], el) == 0;
        }
        if (!ok) {
            return 0;
        }
    }
    if (filters && st->has_match) {
        int r = any_match(st, st->match, st->nmatch, path);
        if (r <= 0) {
            return r;
        }
    }
    int r = any_match(st, st->skip, st->nskip, path);
    return r < 0 ? -1 : !r;
}

/* A result: walk sends it, expandGlob keeps it when the glob matches. -1: a match error. */
static int emit(struct walkst *st, const char *path, const char *name, bool f, bool d, bool l)
{
    if (!st->glob) {
        send_entry_json(st, entry_json(path, name, f, d, l));
        return 0;
    }
    int r = rx_test(st->glob_rx, path, st->md, st->mc);
    if (r == 0 && d && st->star_tail) {
        char *slash;
        if (asprintf(&slash, "%s/", path) < 0) {
            return -1;
        }
        r = rx_test(st->glob_rx, slash, st->md, st->mc);
        free(slash);
    }
    if (r <= 0 || (st->trailing_sep && !d) || (!st->glob_inc_dirs && d)) {
        return r < 0 ? -1 : 0; /* not a match, or a kind @std's expandGlob leaves out */
    }
    size_t pl = strlen(path), nl = strlen(name);
    st->res_bytes += pl + nl + GW_FS_ENTRY_COST;
    if (st->nres >= GW_FS_GLOB_MAX || st->res_bytes > GW_FS_GLOB_BYTES) {
        st->res_over = true;
        return -1;
    }
    if (st->nres == st->rescap) {
        size_t cap = st->rescap > 0 ? 2 * st->rescap : 64;
        struct gres **v = realloc(st->res, cap * sizeof(*v));
        if (v == NULL) {
            return -1;
        }
        st->res = v;
        st->rescap = cap;
    }
    struct gres *e = malloc(sizeof(*e) + pl + nl + 2);
    if (e == NULL) {
        return -1;
    }
    memcpy(e->path, path, pl + 1);
    memcpy(e->path + pl + 1, name, nl + 1);
    e->name = e->path + pl + 1;
    e->f = f;
    e->d = d;
    e->l = l;
    st->res[st->nres++] = e;
    return 0;
}

/* A directory entry (or a followed link to one): report it, prune it when skipped. */
static int walk_dir(struct walkst *st, const char *path, const char *name)
{
    int r = include(st, path, true);
    if (r < 0 || (st->inc_dirs && r > 0 && emit(st, path, name, false, true, false) < 0)) {
        return -1;
    }
    r = include(st, path, false);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        free(st->skip_prefix);
        if ((st->skip_prefix = strdup(path)) == NULL) {
            return -1;
        }
    }
    return 0;
}

static int walk_other(struct walkst *st, const char *path, const char *name, bool f, bool l)
{
    /* @std: a file, or a followed link to something that is not a directory, is reported with
     * includeFiles, with the flags of its directory entry. */
    int r = include(st, path, true);
    if (r < 0) {
        return -1;
    }
    if (r > 0 && st->inc_files) {
        return emit(st, path, name, f, false, l);
    }
    return 0;
}

static bool under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (n > 0 && dir[n - 1] == '/') {
        return strncmp(path, dir, n) == 0;
    }
    return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Settle the pending followed link: a directory when @next_path lies below it. */
static int settle_pending(struct walkst *st, const char *next_path)
{
    if (st->pend_path == NULL) {
        return 0;
    }
    char *p = st->pend_path, *n = st->pend_name;
    st->pend_path = st->pend_name = NULL;
    int r = next_path != NULL && under(next_path, p) ? walk_dir(st, p, n)
                                                     : walk_other(st, p, n, false, true);
    free(p);
    free(n);
    return r;
}

static const char *base_name(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') {
        n--;
    }
    const char *s = memrchr(p, '/', n);
    return s != NULL && s[1] != '\0' ? s + 1 : p;
}

/* The display path of an agent entry path. NULL when out of memory. */
static char *display_path(struct walkst *st, const char *apath)
{
    size_t rl = strlen(st->agent_root);
    const char *rel = apath;
    if (strncmp(apath, st->agent_root, rl) == 0) {
        rel = apath + rl;
        while (*rel == '/') {
            rel++;
        }
    }
    char *out;
    if (*rel == '\0') {
        return strdup(st->base[0] != '\0' ? st->base : ".");
    }
    if (st->base[0] == '\0') {
        return strdup(rel);
    }
    size_t bl = strlen(st->base);
    if (asprintf(&out, "%s%s%s", st->base, st->base[bl - 1] == '/' ? "" : "/", rel) < 0) {
        return NULL;
    }
    return out;
}

static json_t *match_error(struct walkst *st)
{
    if (st->res_over) {
        char msg[160];
        (void)snprintf(msg, sizeof(msg),
                       "expandGlob: more than %u matches or %u MiB of them; narrow the glob or "
                       "use walk(), which streams",
                       GW_FS_GLOB_MAX, GW_FS_GLOB_BYTES >> 20);
        return gw_errobj("Error", "LIMIT", msg);
    }
    return gw_errobj("Error", NULL,
                     "a regular expression exceeded its match limits, or memory "
                     "ran out");
}

/* One entry map of the agent. Returns 0, or -1 having finished the stream. */
static int walk_entry(struct walkst *st, const msgpack_object *e)
{
    const msgpack_object *po = sbx_obj_get(e, "path"), *no = sbx_obj_get(e, "name");
    const msgpack_object *to = sbx_obj_get(e, "type"), *dopt = sbx_obj_get(e, "depth");
    const msgpack_object *eo = sbx_obj_get(e, "error");
    const char *pb, *nb, *tb;
    size_t pl, nl, tl;
    if (po == NULL || no == NULL || to == NULL || dopt == NULL || !sbx_obj_bytes(po, &pb, &pl) ||
        !sbx_obj_bytes(no, &nb, &nl) || !sbx_obj_bytes(to, &tb, &tl) ||
        dopt->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        walk_finish(st, gw_errobj("InvalidData", NULL, "a malformed walk entry from the agent"));
        return -1;
    }
    size_t l1, l2;
    char *ap = gw_fs_utf8_lossy(pb, pl, &l1);
    char *name = gw_fs_utf8_lossy(nb, nl, &l2);
    char *path = ap != NULL ? display_path(st, ap) : NULL;
    free(ap);
    if (path == NULL || name == NULL) {
        free(path);
        free(name);
        walk_finish(st, gw_errobj("Error", "ENOMEM", "out of memory"));
        return -1;
    }
    char type[16];
    (void)snprintf(type, sizeof(type), "%.*s", (int)(tl < 15 ? tl : 15), tb);
    int r = 0;
    if (eo != NULL && eo->type == MSGPACK_OBJECT_MAP) {
        struct sbx_err err;
        sbx_err_clear(&err);
        sbx_err_from_obj(eo, &err);
        walk_finish(st, gw_errobj_sbx(&err, "readdir", path));
        r = -1;
    } else if (dopt->via.u64 == 0) {
        /* The root: @std's createWalkEntry (stat: a link to a directory is a directory). */
        bool dir = strcmp(type, "dir") == 0 || strcmp(type, "symlink") == 0;
        const char *rp = st->glob ? path : st->root_path;
        int inc = include(st, st->glob ? path : st->raw_root, true);
        if (inc < 0 || (st->inc_dirs && inc > 0 &&
                        emit(st, rp, base_name(rp), strcmp(type, "file") == 0, dir, false) < 0)) {
            r = -2;
        } else if ((inc = include(st, st->glob ? path : st->raw_root, false)) <= 0) {
            r = inc < 0 ? -2 : -3; /* a skipped root: nothing below it */
        }
    } else if (settle_pending(st, path) < 0) {
        r = -2;
    } else if (st->skip_prefix != NULL && under(path, st->skip_prefix)) {
        r = 0;
    } else {
        free(st->skip_prefix);
        st->skip_prefix = NULL;
        if (strcmp(type, "symlink") == 0) {
            if (!st->follow) {
                int inc = include(st, path, true);
                if (inc < 0 ||
                    (inc > 0 && st->inc_symlinks && emit(st, path, name, false, false, true) < 0)) {
                    r = -2;
                }
            } else {
                st->pend_path = path;
                st->pend_name = name;
                path = name = NULL;
            }
        } else if (strcmp(type, "dir") == 0) {
            r = walk_dir(st, path, name) < 0 ? -2 : 0;
        } else {
            r = walk_other(st, path, name, strcmp(type, "file") == 0, false) < 0 ? -2 : 0;
        }
    }
    free(path);
    free(name);
    if (r == -2) {
        walk_finish(st, match_error(st));
        return -1;
    }
    return r == -3 ? -1 : r;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct gres *x = *(struct gres *const *)a, *y = *(struct gres *const *)b;
    return strcmp(x->path, y->path);
}

static void glob_unhook(struct walkst *st)
{
    if (st->drain_hooked) {
        st->drain_hooked = false;
        gw_session_off_drain(st->s, st);
        walk_unref(st);
    }
}

static void glob_send(struct walkst *st);

static void glob_drain(void *user)
{
    struct walkst *st = user;
    if (st->cancelled || st->finished) {
        glob_unhook(st);
        return;
    }
    glob_send(st);
}

/* expandGlob's end: the matches sorted by path, sent while the WebSocket has room (the rest
 * each time it drains), then the stream's end. */
static void glob_send(struct walkst *st)
{
    st->refs++; /* across glob_unhook */
    if (!st->sorted) {
        st->sorted = true;
        if (st->nres > 1) {
            qsort(st->res, st->nres, sizeof(*st->res), cmp_entry);
        }
    }
    while (st->res_next < st->nres && !st->cancelled) {
        if (gw_session_congested(st->s)) {
            if (!st->drain_hooked) {
                if (gw_session_on_drain(st->s, glob_drain, st) < 0) {
                    walk_finish(st, gw_errobj("Error", "ENOMEM", "out of memory"));
                    break;
                }
                st->drain_hooked = true;
                st->refs++;
            }
            walk_unref(st);
            return;
        }
        struct gres *r = st->res[st->res_next++];
        send_entry_json(st, entry_json(r->path, r->name, r->f, r->d, r->l));
        free(r);
    }
    glob_unhook(st);
    walk_finish(st, NULL);
    walk_unref(st);
}

/* Walk the entries of @data[*off..len) until the end of the data or @deadline (uv_hrtime), at
 * least one when @first. 0, or -1 having finished the stream (or a skipped root). */
static int walk_entries(struct walkst *st, const uint8_t *data, size_t len, size_t *off,
                        uint64_t deadline, bool first)
{
    msgpack_unpacked u;
    int rc = 0;

    msgpack_unpacked_init(&u);
    for (; *off < len && (first || uv_hrtime() < deadline); first = false) {
        /* One entry at a time, checked as libsbx checks a frame before msgpack-c reads it. */
        size_t elen = 0, eoff = 0;
        struct sbx_err verr;
        msgpack_unpack_return ur =
            sbx_msgpack_scan(data + *off, len - *off, &elen, &verr) < 0
                ? MSGPACK_UNPACK_PARSE_ERROR
                : msgpack_unpack_next(&u, (const char *)data + *off, elen, &eoff);
        *off += elen;
        if (ur != MSGPACK_UNPACK_SUCCESS || u.data.type != MSGPACK_OBJECT_MAP) {
            walk_finish(st, gw_errobj("InvalidData", NULL, "malformed walk data from the agent"));
            rc = -1;
            break;
        }
        if (walk_entry(st, &u.data) < 0) {
            rc = -1;
            break;
        }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* --- the walk queue --------------------------------------------------------------------------- */

/*
 * Every walk's entries are worked through from one queue of the gateway's, never in the callback
 * that brought them: GW_WALK_SLICE_NS of entry work per loop turn for all walks together (the
 * first walk served does at least one entry), round-robin, so that however many walks run, a
 * loop turn does about that much of their work and the rest of the gateway gets its turn. The
 * queue's idle handle exists while a walk waits in it.
 */
struct gw_walkq {
    uv_idle_t idle; /* first: the close callback frees the queue through it */
    struct gw *g;
    struct walkst *head, *tail;
};

static void walk_serve(struct walkst *st, uint64_t deadline, bool first);

static void walkq_run(uv_idle_t *h)
{
    struct gw_walkq *q = h->data;
    struct walkst *last = q->tail; /* each walk once a turn: one served goes behind it */
    uint64_t deadline = uv_hrtime() + GW_WALK_SLICE_NS;
    bool first = true;

    while (q->head != NULL && (first || uv_hrtime() < deadline)) {
        struct walkst *st = q->head;
        bool was_last = st == last;

        q->head = st->qnext;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        st->qnext = NULL;
        st->queued = false;
        walk_serve(st, deadline, first);
        first = false;
        walk_unref(st); /* the queue's */
        if (was_last) {
            break;
        }
    }
    if (q->head == NULL) {
        q->g->walkq = NULL;
        uv_close((uv_handle_t *)&q->idle, (uv_close_cb)free);
    }
}

/* Queue @st behind the walks waiting for their turn. -1: out of memory. */
static int walkq_add(struct walkst *st)
{
    struct gw *g = gw_session_sandbox(st->s)->g;
    struct gw_walkq *q = g->walkq;

    if (st->queued) {
        return 0;
    }
    if (q == NULL) {
        if ((q = calloc(1, sizeof(*q))) == NULL) {
            return -1;
        }
        (void)uv_idle_init(g->loop, &q->idle); /* cannot fail */
        q->idle.data = q;
        q->g = g;
        (void)uv_idle_start(&q->idle, walkq_run); /* cannot fail: a live handle, a callback */
        g->walkq = q;
    }
    st->refs++;
    st->queued = true;
    if (q->tail != NULL) {
        q->tail->qnext = st;
    } else {
        q->head = st;
    }
    q->tail = st;
    return 0;
}

/* Take @st out of the queue (the caller holds a reference of its own). */
static void walkq_remove(struct walkst *st)
{
    struct gw_walkq *q = gw_session_sandbox(st->s)->g->walkq;
    struct walkst *prev = NULL;

    if (!st->queued || q == NULL) {
        return;
    }
    for (struct walkst *w = q->head; w != NULL; prev = w, w = w->qnext) {
        if (w == st) {
            if (prev != NULL) {
                prev->qnext = st->qnext;
            } else {
                q->head = st->qnext;
            }
            if (q->tail == st) {
                q->tail = prev;
            }
            st->qnext = NULL;
            st->queued = false;
            walk_unref(st);
            return;
        }
    }
}

/* The sink's reference and the agent's stream given up: @cancel the stream (still live). */
static void sink_release(struct walkst *st, bool cancel)
{
    if (!st->collecting) {
        return;
    }
    st->collecting = false;
    walkq_remove(st);
    free(st->pbuf);
    st->pbuf = NULL;
    st->plen = st->poff = st->pcap = st->held = 0;
    if (cancel) {
        gw_session_collect_cancel(st->s, st->asid);
    }
    walk_unref(st);
}

/* The stream's end, after every entry: the pending followed link, expandGlob's results; or
 * the error it ended with. */
static void walk_end(struct walkst *st)
{
    if (!st->finished && !st->cancelled) {
        if (st->end_err != NULL) {
            json_t *e = st->end_err;
            st->end_err = NULL;
            walk_finish(st, e);
        } else if (settle_pending(st, NULL) < 0) {
            walk_finish(st, match_error(st));
        } else if (st->glob) {
            glob_send(st);
        } else {
            walk_finish(st, NULL);
        }
    }
}

/* A failure or a skipped root (walk_entries returned -1): what was found is sent. */
static void walk_stop(struct walkst *st)
{
    if (!st->finished) {
        if (st->glob) {
            glob_send(st);
        } else {
            walk_finish(st, NULL); /* a skipped root */
        }
    }
}

/* Keep @data[0..len) for its turn, behind what already waits (its bytes held unacknowledged). */
static int walk_defer(struct walkst *st, const uint8_t *data, size_t len)
{
    if (st->poff > 0) {
        memmove(st->pbuf, st->pbuf + st->poff, st->plen - st->poff);
        st->plen -= st->poff;
        st->poff = 0;
    }
    if (st->plen + len > st->pcap) {
        size_t cap = st->plen + len;
        uint8_t *p = realloc(st->pbuf, cap);
        if (p == NULL) {
            return -1;
        }
        st->pbuf = p;
        st->pcap = cap;
    }
    if (walkq_add(st) < 0) {
        return -1;
    }
    memcpy(st->pbuf + st->plen, data, len);
    st->plen += len;
    st->held += len;
    return 0;
}

/* @st's turn in the queue: its entries until @deadline (at least one when @first); queued again
 * while some wait; once through, the agent's bytes are acknowledged (or the end handled). */
static void walk_serve(struct walkst *st, uint64_t deadline, bool first)
{
    if (!st->collecting || st->finished || st->cancelled || st->poff == st->plen) {
        return;
    }
    st->refs++;
    if (walk_entries(st, st->pbuf, st->plen, &st->poff, deadline, first) < 0) {
        walk_stop(st);
        sink_release(st, !st->end_seen);
    } else if (st->poff == st->plen) {
        size_t held = st->held;

        st->plen = st->poff = st->held = 0;
        if (st->end_seen) {
            walk_end(st);
            sink_release(st, false);
        } else {
            gw_session_collect_ack(st->s, st->asid, held);
        }
    } else if (walkq_add(st) < 0) {
        walk_finish(st, gw_errobj("Error", "ENOMEM", "out of memory"));
        sink_release(st, !st->end_seen);
    }
    walk_unref(st);
}

static int walk_sink(void *user, const uint8_t *data, size_t len, bool end,
                     const struct sbx_err *err)
{
    struct walkst *st = user;

    if (err != NULL) {
        if (st->poff != st->plen && !st->finished && !st->cancelled &&
            strcmp(err->code, SBX_E_EOF) != 0) {
            /* The entries the agent sent before failing go first (walk_serve ends it). */
            st->end_err = gw_errobj_sbx(err, "walk", st->raw_root);
            st->end_seen = true;
            return 0;
        }
        /* The connection ended (with the session): now, whatever waits. */
        if (!st->finished && !st->cancelled) {
            walk_finish(st, gw_errobj_sbx(err, "walk", st->raw_root));
        }
        sink_release(st, false);
        return 0;
    }
    if (end) {
        st->end_seen = true;
        if (st->poff == st->plen) {
            walk_end(st);
            sink_release(st, false);
        }
        return 0; /* else walk_serve ends it after the entries that wait */
    }
    if (st->finished || st->cancelled) {
        walk_finish(st, NULL);
        st->collecting = false; /* the session cancels the stream on -1 */
        walkq_remove(st);
        walk_unref(st);
        return -1;
    }
    if (walk_defer(st, data, len) < 0) {
        walk_finish(st, gw_errobj("Error", "ENOMEM", "out of memory"));
        st->collecting = false;
        walkq_remove(st);
        walk_unref(st);
        return -1;
    }
    return GW_SINK_LATER;
}

/* Open the SDK stream: answer {streamId}, send start, hook cancel. */
static void open_sdk_stream(struct walkst *st, struct gw_call *call)
{
    struct gw_sandbox *sb = gw_session_sandbox(call->s);
    st->sid = gw_stream_id(sb->g);
    st->refs++;
    if (gw_session_on_cancel(call->s, st->sid, walk_cancel_cb, st) == 0) {
        st->hooked = true;
    } else {
        st->refs--;
    }
    gw_session_notify(st->s, "$sandbox.stream.start",
                      json_pack("{s:I}", "streamId", (json_int_t)st->sid));
    gw_call_ok(call, json_pack("{s:I}", "streamId", (json_int_t)st->sid));
}

static void walk_started_(struct gw_call *call, const struct sbx_event *ev);

static void walk_started(struct gw_call *call, const struct sbx_event *ev)
{
    struct walkst *st = call->data;
    st->refs++;
    walk_started_(call, ev);
    if (call->answered && !st->hooked && !st->collecting) {
        turn_end(st); /* failed, or already over */
    }
    walk_unref(st);
}

static void walk_started_(struct gw_call *call, const struct sbx_event *ev)
{
    struct walkst *st = call->data;
    if (ev->error != NULL) {
        if (st->glob &&
            (strcmp(ev->error->code, "ENOENT") == 0 || strcmp(ev->error->code, "ENOTDIR") == 0)) {
            /* @std: a missing fixed prefix matches nothing. */
            st->refs++; /* held across the answer */
            open_sdk_stream(st, call);
            walk_finish(st, NULL);
            walk_unref(st);
            return;
        }
        gw_call_fail_sbx(call, ev->error, "walk", st->raw_root);
        return;
    }
    if (ev->rec != SBX_REC_STREAM) {
        gw_call_fail(call, "InvalidData", NULL, "%s: the agent sent no stream", call->method);
        return;
    }
    st->refs++; /* the sink's */
    if (gw_session_collect(call->s, ev->r.stream.stream, walk_sink, st) < 0) {
        st->refs--;
        gw_call_fail(call, "Error", NULL, "%s: the agent's stream vanished", call->method);
        return;
    }
    st->asid = ev->r.stream.stream;
    st->collecting = true;
    open_sdk_stream(st, call);
}

/* Send fs.walk for @st (agent_root set). @max_depth < 0: unlimited. */
static void walk_send(struct gw_call *call, struct walkst *st, int64_t max_depth)
{
    struct sbx_conn *c = gw_fs_conn(call);
    struct sbx_err err;
    if (c == NULL) {
        return;
    }
    /* The steps one entry's regular expressions share: match once, skip twice (a directory's
     * include() with and without the filters), the glob on the path and on the path and '/'. */
    size_t nrx = st->nmatch + 2 * st->nskip + (st->glob_rx != NULL ? 2 : 0);
    uint32_t steps = nrx > 0 ? GW_RX_ENTRY_STEPS / (uint32_t)nrx : GW_RX_ENTRY_STEPS;
    (void)pcre2_set_match_limit(st->mc, steps > GW_RX_STEPS_MIN ? steps : GW_RX_STEPS_MIN);
    struct sbx_walk_params p = {
        .path = st->agent_root,
        .cwd = gw_session_cwd(call->s),
        .has_max_depth = max_depth >= 0,
        .max_depth = max_depth >= 0 ? (uint32_t)max_depth : 0,
        .follow_symlinks = st->follow,
    };
    void *u = gw_call_expect(call, walk_started);
    if (sbx_fs_walk(c, &p, u, NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "walk", st->raw_root);
    }
}

/* Compile the array of {source, flags} at @key into *@v / *@n. -1 having answered. */
static int param_regexes(struct gw_call *call, json_t *params, const char *key, pcre2_code ***v,
                         size_t *n)
{
    json_t *arr = json_object_get(params, key);
    if (arr == NULL || json_is_null(arr)) {
        return 0;
    }
    if (!json_is_array(arr) || json_array_size(arr) > GW_WALK_PATTERNS_MAX) {
        gw_call_fail(call, "TypeError", NULL, "%s: '%s' must be an array of at most %d RegExps",
                     call->method, key, GW_WALK_PATTERNS_MAX);
        return -1;
    }
    size_t cnt = json_array_size(arr);
    *v = calloc(cnt > 0 ? cnt : 1, sizeof(**v));
    if (*v == NULL) {
        walk_oom(call);
        return -1;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *src = json_object_get(o, "source"), *fl = json_object_get(o, "flags");
        if (!json_is_string(src) || (fl != NULL && !json_is_string(fl))) {
            gw_call_fail(call, "TypeError", NULL, "%s: %s[%zu] must be {source, flags}",
                         call->method, key, i);
            return -1;
        }
        char why[512];
        (*v)[i] = gw_js_regex(json_string_value(src), json_string_length(src),
                              fl != NULL ? json_string_value(fl) : "", why, sizeof(why));
        if ((*v)[i] == NULL) {
            gw_call_fail(call, "SyntaxError", NULL, "%s", why);
            return -1;
        }
        (*n)++;
    }
    return 0;
}

/* maxDepth: absent, null (Infinity) or a number. -1: unlimited; -2: negative (no entries). */
static int param_depth(struct gw_call *call, json_t *params, int64_t *out)
{
    json_t *v = json_object_get(params, "maxDepth");
    *out = -1;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_number(v)) {
        gw_call_fail(call, "TypeError", NULL, "walk: 'maxDepth' must be a number");
        return -1;
    }
    double d = json_number_value(v);
    if (d < 0) {
        *out = -2;
    } else if (d < 1e9) {
        *out = (int64_t)d; /* d >= 0: truncation is floor */
    }
    return 0;
}

/* walk {path, maxDepth?, includeFiles?, includeDirs?, includeSymlinks?, followSymlinks?,
 * canonicalize?, exts?, match?, skip?} -> {streamId}: WalkEntries in @std/fs walk order. */
void gw_m_walk(struct gw_call *call, json_t *params)
{
    const char *path;
    const char **exts;
    size_t nexts;
    bool canon;
    int64_t depth;
    struct walkst *st;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        (st = walk_new(call, false)) == NULL ||
        gw_param_bool(call, params, "includeFiles", true, &st->inc_files) < 0 ||
        gw_param_bool(call, params, "includeDirs", true, &st->inc_dirs) < 0 ||
        gw_param_bool(call, params, "includeSymlinks", true, &st->inc_symlinks) < 0 ||
        gw_param_bool(call, params, "followSymlinks", false, &st->follow) < 0 ||
        gw_param_bool(call, params, "canonicalize", true, &canon) < 0 ||
        gw_param_strv(call, params, "exts", &exts, &nexts) < 0 ||
        param_depth(call, params, &depth) < 0 ||
        param_regexes(call, params, "match", &st->match, &st->nmatch) < 0 ||
        param_regexes(call, params, "skip", &st->skip, &st->nskip) < 0) {
        return;
    }
    st->has_match = json_is_array(json_object_get(params, "match"));
    if (nexts > 0) {
        if ((st->exts = calloc(nexts, sizeof(char *))) == NULL) {
            walk_oom(call);
            return;
        }
        for (size_t i = 0; i < nexts; i++) {
            if (asprintf(&st->exts[i], "%s%s", exts[i][0] == '.' ? "" : ".", exts[i]) < 0) {
                walk_oom(call);
                return;
            }
            st->nexts++;
        }
    }
    char *norm = gw_path_normalize(path);
    st->raw_root = strdup(path);
    st->root_path = norm;
    if (norm == NULL || st->raw_root == NULL) {
        walk_oom(call);
        return;
    }
    /* The agent walks the normalized root; entries are joined to it as @std's join does. */
    size_t nl = strlen(norm);
    st->agent_root = nl > 1 && norm[nl - 1] == '/' ? strndup(norm, nl - 1) : strdup(norm);
    st->base =
        strcmp(norm, ".") == 0 || strcmp(norm, "./") == 0 ? strdup("") : strdup(st->agent_root);
    if (st->agent_root == NULL || st->base == NULL) {
        walk_oom(call);
        return;
    }
    if (depth == -2) {
        st->refs++;
        open_sdk_stream(st, call);
        walk_finish(st, NULL);
        walk_unref(st);
        return;
    }
    walk_send(call, st, depth);
}

/* --- expandGlob ------------------------------------------------------------------------------ */

/* @std/path resolve(@base, @p) for POSIX (no cwd lookup: @base is absolute). */
static char *resolve_path(const char *base, const char *p)
{
    char *joined;
    if (p[0] == '/') {
        joined = strdup(p);
    } else if (asprintf(&joined, "%s/%s", base, p) < 0) {
        joined = NULL;
    }
    if (joined == NULL) {
        return NULL;
    }
    char *n = gw_path_normalize(joined);
    free(joined);
    if (n != NULL) {
        size_t l = strlen(n);
        while (l > 1 && n[l - 1] == '/') {
            n[--l] = '\0';
        }
    }
    return n;
}

/* Escape glob syntax in a literal path, so globToRegExp reads it back literally. */
static void glob_escape(struct sb *b, const char *s)
{
    for (; *s != '\0'; s++) {
        if (strchr("\\*?[]{}()!@+,|", *s) != NULL) {
            sb_addc(b, '\\');
        }
        sb_addc(b, *s);
    }
}

/* Remove glob escapes from a literal segment (@std's unescapeGlobSegment). */
static void glob_unescape(struct sb *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            i++;
        }
        sb_addc(b, s[i]);
    }
}

static void glob_stat_done(struct gw_call *call, const struct sbx_event *ev)
{
    struct walkst *st = call->data;
    if (ev->error != NULL && strcmp(ev->error->code, "ENOENT") != 0) {
        gw_call_fail_sbx(call, ev->error, "stat", st->agent_root);
        return;
    }
    st->refs++;
    open_sdk_stream(st, call);
    if (ev->error == NULL && ev->rec == SBX_REC_FILEINFO) {
        const char *t = ev->r.fileinfo.type != NULL ? ev->r.fileinfo.type : "";
        bool d = strcmp(t, "dir") == 0;
        if (!(st->trailing_sep && !d) && !(!st->glob_inc_dirs && d)) {
            send_entry_json(st, entry_json(st->agent_root, base_name(st->agent_root),
                                           strcmp(t, "file") == 0, d, false));
        }
    }
    walk_finish(st, NULL);
    walk_unref(st);
}

/* The walk of expandGlob, once the session has room for its matches (gw_call_when_room). The
 * call's turn lasts until they are sent: the call is held until then. */
static void glob_start(struct gw_call *call)
{
    struct walkst *st = call->data;
    gw_call_hold(call);
    st->turn = true;
    st->refs++;
    walk_send(call, st, st->glob_depth);
    if (call->answered) {
        turn_end(st); /* refused at once */
    }
    walk_unref(st);
}

/* expandGlob {glob, extended?, globstar?, caseInsensitive?, root?, exclude?, includeDirs?,
 * followSymlinks?, canonicalize?} -> {streamId}: the matches sorted by path. */
void gw_m_expand_glob(struct gw_call *call, json_t *params)
{
    const char *glob, *root;
    const char **excl;
    size_t nexcl;
    bool extended, globstar, icase, canon;
    struct walkst *st;
    if (gw_param_str(call, params, "glob", true, &glob) < 0 ||
        gw_param_str(call, params, "root", false, &root) < 0 ||
        gw_param_bool(call, params, "extended", true, &extended) < 0 ||
        gw_param_bool(call, params, "globstar", true, &globstar) < 0 ||
        gw_param_bool(call, params, "caseInsensitive", false, &icase) < 0 ||
        gw_param_bool(call, params, "canonicalize", true, &canon) < 0 ||
        gw_param_strv(call, params, "exclude", &excl, &nexcl) < 0 ||
        (st = walk_new(call, true)) == NULL ||
        gw_param_bool(call, params, "includeDirs", true, &st->glob_inc_dirs) < 0 ||
        gw_param_bool(call, params, "followSymlinks", false, &st->follow) < 0) {
        return;
    }
    if (strlen(glob) > GW_WALK_PATTERN_MAX || nexcl > GW_WALK_PATTERNS_MAX) {
        gw_call_fail(call, "TypeError", NULL, "expandGlob: the glob or exclude list is too long");
        return;
    }
    st->inc_files = st->inc_dirs = st->inc_symlinks = true;
    const char *cwd = gw_session_cwd(call->s);
    bool abs = glob[0] == '/';
    size_t gl = strlen(glob);
    st->trailing_sep = gl > 0 && glob[gl - 1] == '/';
    char *abs_root =
        abs ? strdup(root != NULL ? root : "/") : resolve_path(cwd, root != NULL ? root : ".");
    if (abs_root == NULL || (st->raw_root = strdup(glob)) == NULL) {
        free(abs_root);
        walk_oom(call);
        return;
    }
    const char *flags = icase ? "i" : "";
    char why[512];
    /* exclude: resolved against the root, as globs. */
    if (nexcl > 0 && (st->skip = calloc(nexcl, sizeof(*st->skip))) == NULL) {
        free(abs_root);
        walk_oom(call);
        return;
    }
    for (size_t i = 0; i < nexcl; i++) {
        char *r = resolve_path(abs_root, excl[i]);
        char *src = r != NULL ? gw_glob_to_regex(r, extended, globstar) : NULL;
        free(r);
        if (src == NULL) {
            free(abs_root);
            walk_oom(call);
            return;
        }
        st->skip[i] = gw_js_regex(src, strlen(src), flags, why, sizeof(why));
        free(src);
        if (st->skip[i] == NULL) {
            free(abs_root);
            gw_call_fail(call, "SyntaxError", NULL, "expandGlob: exclude[%zu]: %s", i, why);
            return;
        }
        st->nskip++;
    }
    /* The fixed prefix: leading segments without glob syntax. */
    struct sb fixed = { 0 };
    sb_add(&fixed, abs ? "/" : abs_root);
    free(abs_root);
    const char *p = glob;
    while (*p == '/') {
        p++;
    }
    for (;;) {
        const char *e = strchr(p, '/');
        size_t n = e != NULL ? (size_t)(e - p) : strlen(p);
        if (n == 0) {
            break;
        }
        char *seg = strndup(p, n);
        int g = seg != NULL ? gw_is_glob(seg) : -1;
        free(seg);
        if (g != 0) {
            if (g < 0) {
                fixed.oom = true;
            }
            break;
        }
        if (fixed.n > 0 && fixed.p[fixed.n - 1] != '/') {
            sb_addc(&fixed, '/');
        }
        glob_unescape(&fixed, p, n);
        p += n;
        while (*p == '/') {
            p++;
        }
    }
    char *fixed_root = sb_take(&fixed);
    char *norm = fixed_root != NULL ? gw_path_normalize(fixed_root) : NULL;
    free(fixed_root);
    if (norm == NULL) {
        walk_oom(call);
        return;
    }
    size_t nl = strlen(norm);
    while (nl > 1 && norm[nl - 1] == '/') {
        norm[--nl] = '\0';
    }
    st->agent_root = norm;
    st->base = strdup(norm);
    st->root_path = strdup(norm);
    if (st->base == NULL || st->root_path == NULL) {
        walk_oom(call);
        return;
    }
    /* The rest: segments to match, and how deep they reach. */
    int64_t depth = 0;
    bool star2 = false;
    for (const char *q = p; *q != '\0';) {
        const char *e = strchr(q, '/');
        size_t n = e != NULL ? (size_t)(e - q) : strlen(q);
        if (n > 0) {
            bool s2 = globstar && n == 2 && q[0] == '*' && q[1] == '*';
            depth++;
            star2 = star2 || s2;
            st->star_tail = s2;
        }
        q += n;
        while (*q == '/') {
            q++;
        }
    }
    if (depth == 0) {
        /* No glob syntax at all: the path itself, if it exists (@std's createWalkEntry). */
        struct sbx_conn *c = gw_fs_conn(call);
        struct sbx_err err;
        if (c == NULL) {
            return;
        }
        void *u = gw_call_expect(call, glob_stat_done);
        if (sbx_fs_stat(c, st->agent_root, cwd, u, NULL, &err) < 0) {
            gw_call_unexpect(call);
            gw_call_fail_sbx(call, &err, "stat", st->agent_root);
        }
        return;
    }
    struct sb full = { 0 };
    glob_escape(&full, norm);
    if (full.n == 0 || full.p[full.n - 1] != '/') {
        sb_addc(&full, '/');
    }
    sb_add(&full, p);
    char *full_glob = sb_take(&full);
    char *src = full_glob != NULL ? gw_glob_to_regex(full_glob, extended, globstar) : NULL;
    free(full_glob);
    if (src == NULL) {
        walk_oom(call);
        return;
    }
    st->glob_rx = gw_js_regex(src, strlen(src), flags, why, sizeof(why));
    free(src);
    if (st->glob_rx == NULL) {
        gw_call_fail(call, "SyntaxError", NULL, "expandGlob: %s", why);
        return;
    }
    st->glob_depth = star2 ? -1 : depth;
    gw_call_when_room(call, glob_start);
}
