/* Glob patterns with `**`: compile into components, match a component at a time; gitignore rules
 * on top of them. */
#include "glob.h"

#include <stdlib.h>
#include <string.h>

#include "strv.h"

#define ALTS_MAX   256u /* brace alternatives of one pattern component */
#define BRACES_MAX 32u  /* '{' in one component: bounds the work of expanding them */

/* Append @s (taken over) to the NULL-terminated @v of *@n strings. -1 when out of memory, -2
 * when there would be more than ALTS_MAX. */
static int alts_push(char ***v, unsigned *n, char *s)
{
    char **nv;

    if (s == NULL) {
        return -1;
    }
    if (*n >= ALTS_MAX) {
        free(s);
        return -2;
    }
    nv = realloc(*v, (*n + 2) * sizeof(*nv));
    if (nv == NULL) {
        free(s);
        return -1;
    }
    nv[(*n)++] = s;
    nv[*n] = NULL;
    *v = nv;
    return 0;
}

/* Expand the first top-level {a,b} of @s (length @n) recursively into @v. A brace without a
 * comma or without its closing brace is literal, and the groups inside it still expand, as in
 * bash: {{a,b}} gives {a} and {b}. As alts_push returns. */
static int brace_expand(const char *s, size_t n, char ***v, unsigned *nv)
{
    size_t open = n, close = 0;
    int depth = 0;
    bool comma = false;

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            i++;
        } else if (s[i] == '{') {
            if (depth++ == 0) {
                open = i;
                comma = false;
            }
        } else if (s[i] == ',' && depth == 1) {
            comma = true;
        } else if (s[i] == '}' && depth > 0) {
            if (--depth == 0) {
                if (comma) {
                    close = i;
                    break;
                }
                i = open; /* a literal brace: look again inside it */
            }
        }
        if (i + 1 == n && depth > 0) {
            depth = 0; /* never closed: that brace is literal, look again after it */
            i = open;
        }
    }
    if (close == 0) {
        return alts_push(v, nv, strndup(s, n));
    }
    for (size_t a = open + 1, i = open + 1; i <= close; i++) {
        if (s[i] == '\\' && i + 1 < close) {
            i++;
            continue;
        }
        if (s[i] == '{') {
            depth++;
        } else if (s[i] == '}' && depth > 0 && i < close) {
            depth--;
        } else if ((s[i] == ',' && depth == 0) || i == close) {
            size_t len = open + (i - a) + (n - close - 1);
            char *buf = malloc(len + 1);
            int r;
            if (buf == NULL) {
                return -1;
            }
            memcpy(buf, s, open);
            memcpy(buf + open, s + a, i - a);
            memcpy(buf + open + (i - a), s + close + 1, n - close - 1);
            buf[len] = '\0';
            r = brace_expand(buf, len, v, nv);
            free(buf);
            if (r < 0) {
                return r;
            }
            a = i + 1;
        }
    }
    return 0;
}

void agent_glob_free(struct agent_glob *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        agent_strv_free(g->c[i].alts);
    }
    free(g->c);
    free(g->buf);
    free(g->scratch);
    g->c = NULL;
    g->buf = NULL;
    g->scratch = NULL;
    g->n = 0;
}

/* Whether the component @p (@n bytes) is `**`: exactly that, or with AGENT_GLOB_GIT any run of
 * two or more stars. */
static bool is_globstar(const char *p, size_t n, unsigned flags)
{
    if ((flags & AGENT_GLOB_GIT) != 0) {
        return n >= 2 && strspn(p, "*") >= n;
    }
    return n == 2 && p[0] == '*' && p[1] == '*';
}

/*
 * Check the shape of @pat before anything is allocated: its components that each match one name
 * (all but `**`) must be 1..AGENT_GLOB_COMPS_MAX, and under AGENT_GLOB_GIT none may be empty.
 * Returns how many '/'-separated parts it has, or -2 with BAD_PARAM naming @field.
 */
static long glob_shape(const char *pat, unsigned flags, const char *field, struct sbx_err *err)
{
    size_t named = 0, stars = 0;
    long parts = 0;

    for (const char *p = pat;; p++) {
        size_t n = strcspn(p, "/");
        if (n == 0 && (flags & AGENT_GLOB_GIT) != 0) {
            sbx_err_param(err, field, "%s has an empty component", field);
            return -2;
        }
        if (is_globstar(p, n, flags)) {
            stars++;
        } else if (n > 0) {
            named++;
        }
        parts++;
        p += n;
        if (*p == '\0') {
            break;
        }
    }
    if (named + stars == 0) {
        sbx_err_param(err, field, "%s has no components", field);
        return -2;
    }
    if (named > AGENT_GLOB_COMPS_MAX) {
        sbx_err_param(err, field, "%s has more than %u components", field, AGENT_GLOB_COMPS_MAX);
        return -2;
    }
    return parts;
}

/* Append the component @p (@n bytes, NUL-terminated, not empty) to @g. Returns 0, or fails as
 * agent_glob_compile does (the caller frees @g). */
static int comp_add(struct agent_glob *g, char *p, size_t n, const char *field, struct sbx_err *err)
{
    struct agent_glob_comp *c = &g->c[g->n];
    unsigned nalts = 0, braces = 0;
    int r;

    if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
        sbx_err_param(err, field, "%s: \".\" and \"..\" components are not allowed", field);
        return -2;
    }
    if (is_globstar(p, n, g->flags)) {
        if (g->n == 0 || g->c[g->n - 1].pat != NULL) { /* "**" twice in a row: the same as once */
            g->n++;
        }
        return 0;
    }
    c->pat = p;
    g->n++;
    if ((g->flags & AGENT_GLOB_BRACES) == 0 || memchr(p, '{', n) == NULL) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        braces += p[i] == '{';
    }
    if (braces > BRACES_MAX) {
        sbx_err_param(err, field, "%s: more than %u braces in a component", field, BRACES_MAX);
        return -2;
    }
    r = brace_expand(p, n, &c->alts, &nalts);
    if (r == -1) {
        return sbx_err_oom(err);
    }
    if (r < 0) {
        sbx_err_param(err, field, "%s: more than %u brace alternatives in a component", field,
                      ALTS_MAX);
        return -2;
    }
    return 0;
}

int agent_glob_compile(struct agent_glob *g, const char *pat, unsigned flags, const char *field,
                       struct sbx_err *err)
{
    long parts;

    memset(g, 0, sizeof(*g));
    g->flags = flags;
    parts = glob_shape(pat, flags, field, err);
    if (parts < 0) {
        return -2;
    }
    g->buf = strdup(pat);
    g->c = calloc((size_t)parts, sizeof(*g->c));
    if (g->buf == NULL || g->c == NULL) {
        agent_glob_free(g);
        return sbx_err_oom(err);
    }
    for (char *p = g->buf;; p++) {
        size_t n = strcspn(p, "/");
        bool last = p[n] == '\0';
        int r;
        p[n] = '\0'; /* each component a string of its own */
        r = n > 0 ? comp_add(g, p, n, field, err) : 0;
        if (r < 0) {
            agent_glob_free(g);
            return r;
        }
        p += n;
        if (last) {
            break;
        }
    }
    g->setsz = (g->n + 1 + 7) / 8;
    g->scratch = malloc(2 * g->setsz);
    if (g->scratch == NULL) {
        agent_glob_free(g);
        return sbx_err_oom(err);
    }
    return 0;
}

static bool set_has(const uint8_t *set, unsigned i)
{
    return (set[i / 8] >> (i % 8)) & 1;
}

static void set_add(uint8_t *set, unsigned i)
{
    set[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Position @i is a trailing `**` that must match at least one component (AGENT_GLOB_GIT). */
static bool inside_at(const struct agent_glob *g, unsigned i)
{
    return (g->flags & AGENT_GLOB_GIT) != 0 && i + 1 == g->n;
}

/* `**` also matches zero components: wherever it stands, the position after it is reached
 * (but for a trailing one under AGENT_GLOB_GIT). */
static void closure(const struct agent_glob *g, uint8_t *set)
{
    for (unsigned i = 0; i < g->n; i++) {
        if (set[i / 8] == 0) {
            i |= 7; /* a byte without positions: on to the next (long patterns) */
        } else if (set_has(set, i) && g->c[i].pat == NULL && !inside_at(g, i)) {
            set_add(set, i + 1);
        }
    }
}

void agent_glob_start(const struct agent_glob *g, uint8_t *set)
{
    memset(set, 0, g->setsz);
    set_add(set, 0);
    closure(g, set);
}

bool agent_glob_matched(const struct agent_glob *g, const uint8_t *set)
{
    return set_has(set, g->n);
}

/* Match one pattern character (literal, `\x`, `?` or a `[...]` class) at @p against @ch. Returns
 * the position after it, or NULL when it does not match. */
static const char *match_one(const char *p, unsigned char ch)
{
    if (*p == '?') {
        return p + 1;
    }
    if (*p == '\\' && p[1] != '\0') {
        return (unsigned char)p[1] == ch ? p + 2 : NULL;
    }
    if (*p == '[') {
        const char *q = p + 1;
        bool neg = false, hit = false;
        if (*q == '!' || *q == '^') {
            neg = true;
            q++;
        }
        for (bool first = true; *q != '\0' && (*q != ']' || first); first = false) {
            unsigned char lo = (unsigned char)*q, hi;
            if (*q == '\\' && q[1] != '\0') {
                lo = (unsigned char)*++q;
            }
            q++;
            hi = lo;
            if (*q == '-' && q[1] != ']' && q[1] != '\0') {
                q++;
                if (*q == '\\' && q[1] != '\0') {
                    q++;
                }
                hi = (unsigned char)*q++;
            }
            hit |= ch >= lo && ch <= hi;
        }
        if (*q == ']') {
            return hit != neg ? q + 1 : NULL;
        }
        /* No closing bracket: a literal '['. */
    }
    return (unsigned char)*p == ch ? p + 1 : NULL;
}

/*
 * fnmatch(3) for one component, the @n bytes at @s, without its recursion: the classic greedy
 * match that returns to the last `*` on a mismatch, O(len(pattern) * len(name)) however many
 * stars a hostile pattern has. With @period a name starting with '.' needs a literal '.' first
 * in the pattern.
 */
static bool wild_match(const char *p, const char *s, size_t n, bool period)
{
    const char *end = s + n, *star = NULL, *mark = NULL;

    if (period && n > 0 && *s == '.' && *p != '.' && !(p[0] == '\\' && p[1] == '.')) {
        return false;
    }
    while (s < end) {
        const char *next;
        if (*p == '*') {
            while (*p == '*') {
                p++;
            }
            star = p;
            mark = s;
            continue;
        }
        next = *p != '\0' ? match_one(p, (unsigned char)*s) : NULL;
        if (next != NULL) {
            p = next;
            s++;
        } else if (star != NULL) {
            p = star;
            s = ++mark;
        } else {
            return false;
        }
    }
    while (*p == '*') {
        p++;
    }
    return *p == '\0';
}

/* Whether the component @c matches the @n bytes at @name. */
static bool comp_match(const struct agent_glob_comp *c, const char *name, size_t n, bool period)
{
    if (c->alts == NULL) {
        return wild_match(c->pat, name, n, period);
    }
    for (char **a = c->alts; *a != NULL; a++) {
        if (wild_match(*a, name, n, period)) {
            return true;
        }
    }
    return false;
}

/* agent_glob_step for the @n bytes at @name. */
static bool step(const struct agent_glob *g, const uint8_t *in, const char *name, size_t n,
                 bool loop, uint8_t *out)
{
    bool period = (g->flags & AGENT_GLOB_PERIOD) != 0;
    bool alive = false;

    memset(out, 0, g->setsz);
    for (unsigned i = 0; i < g->n; i++) {
        if (in[i / 8] == 0) {
            i |= 7; /* as in closure() */
            continue;
        }
        if (!set_has(in, i)) {
            continue;
        }
        if (g->c[i].pat == NULL) { /* `**` */
            if (loop && !(period && name[0] == '.')) {
                set_add(out, i);
                if (inside_at(g, i)) {
                    set_add(out, i + 1); /* it has matched one component now */
                }
            }
            continue;
        }
        if (comp_match(&g->c[i], name, n, period)) {
            set_add(out, i + 1);
        }
    }
    closure(g, out);
    for (unsigned i = 0; i < g->n && !alive; i++) {
        if (out[i / 8] == 0) {
            i |= 7;
        } else {
            alive = set_has(out, i);
        }
    }
    return alive;
}

bool agent_glob_step(const struct agent_glob *g, const uint8_t *in, const char *name, bool loop,
                     uint8_t *out)
{
    return step(g, in, name, strlen(name), loop, out);
}

bool agent_glob_match(struct agent_glob *g, const char *path)
{
    uint8_t *cur = g->scratch, *next = g->scratch + g->setsz;

    agent_glob_start(g, cur);
    for (const char *p = path; *p != '\0';) {
        size_t n = strcspn(p, "/");
        uint8_t *t;
        if (n == 0) {
            p++;
            continue;
        }
        if (!step(g, cur, p, n, true, next) && !agent_glob_matched(g, next)) {
            return false; /* no position left: nothing below can match either */
        }
        t = cur;
        cur = next;
        next = t;
        p += n;
    }
    return agent_glob_matched(g, cur);
}

void agent_ignore_free(struct agent_ignore *ig)
{
    for (size_t i = 0; i < ig->n; i++) {
        agent_glob_free(&ig->v[i].pat);
    }
    free(ig->v);
    ig->v = NULL;
    ig->n = ig->cap = 0;
}

int agent_ignore_add(struct agent_ignore *ig, const char *line, size_t len)
{
    struct agent_ignore_rule r = { 0 };
    struct sbx_err err;
    size_t stars = 0;
    char *pat;
    int rc;

    for (size_t i = 0; i < len; i++) {
        stars += line[i] == '*';
    }
    if (stars > AGENT_IGNORE_STARS_MAX) {
        return -2;
    }

    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
        len--;
    }
    /* Trailing spaces are ignored unless escaped. */
    while (len > 0 && line[len - 1] == ' ' && !(len > 1 && line[len - 2] == '\\')) {
        len--;
    }
    if (len == 0 || line[0] == '#') {
        return 0;
    }
    if (line[0] == '!') {
        r.negate = true;
        line++;
        len--;
    } else if (line[0] == '\\' && len > 1 && (line[1] == '!' || line[1] == '#')) {
        line++;
        len--;
    }
    if (len > 0 && line[len - 1] == '/') {
        r.dir_only = true;
        len--;
    }
    if (len > 0 && line[0] == '/') {
        r.anchored = true;
        line++;
        len--;
    }
    if (len == 0) {
        return 0;
    }
    if (memchr(line, '/', len) != NULL) {
        r.anchored = true;
    }
    pat = strndup(line, len);
    if (pat == NULL) {
        return -1;
    }
    rc = agent_glob_compile(&r.pat, pat, AGENT_GLOB_GIT, "exclude", &err);
    free(pat);
    if (rc < 0) {
        return rc == -2 ? 0 : -1;
    }
    if (ig->n == ig->cap) {
        size_t cap = ig->cap ? ig->cap * 2 : 16;
        struct agent_ignore_rule *v = realloc(ig->v, cap * sizeof(*v));
        if (v == NULL) {
            agent_glob_free(&r.pat);
            return -1;
        }
        ig->v = v;
        ig->cap = cap;
    }
    ig->v[ig->n++] = r;
    return 0;
}

bool agent_ignore_match(struct agent_ignore *ig, const char *rel, bool is_dir)
{
    const char *name = strrchr(rel, '/');
    bool excluded = false;

    name = name != NULL ? name + 1 : rel;
    for (size_t i = 0; i < ig->n; i++) {
        struct agent_ignore_rule *r = &ig->v[i];
        if (r->dir_only && !is_dir) {
            continue;
        }
        if (r->negate != excluded) {
            continue; /* cannot change the outcome */
        }
        if (agent_glob_match(&r->pat, r->anchored ? rel : name)) {
            excluded = !r->negate;
        }
    }
    return excluded;
}
