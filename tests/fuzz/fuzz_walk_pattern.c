/*
 * libFuzzer target for fs.glob's patterns as its walk (agent/fswalk.c) uses them: a pattern and
 * its excludes compiled with fs.glob's flags (braces, hidden names), then a tree of paths walked
 * a component at a time with one position set per open directory, as walk_next does. The input
 * is the pattern, up to 4 excludes and the paths, one a line, the groups separated by an empty
 * line. What the walk reports must be what a whole-path match says (the pattern matches, no
 * exclude matches the path or a directory above it: an excluded directory is not entered), a
 * pruned directory holds nothing the pattern matches, a name starting with '.' is matched only by
 * a pattern component that starts with '.' too, and `**` alone never enters such a directory.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_workload_check.h"
#include "glob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WALK_GLOB (AGENT_GLOB_BRACES | AGENT_GLOB_PERIOD)
#define EXCL_MAX  4

/* Walks @path from the root as walk_next does. Returns whether it is reported. */
static bool walk(struct agent_glob *pat, struct agent_glob *excl, unsigned nexcl, const char *path)
{
    uint8_t *sets[EXCL_MAX + 1], *next[EXCL_MAX + 1];
    struct agent_glob *g[EXCL_MAX + 1] = { pat };
    bool report = false, alive = true;
    const char *p = path;

    for (unsigned i = 0; i < nexcl; i++) {
        g[i + 1] = &excl[i];
    }
    for (unsigned i = 0; i <= nexcl; i++) {
        sets[i] = calloc(1, g[i]->setsz);
        next[i] = calloc(1, g[i]->setsz);
        agent_glob_start(g[i], sets[i]);
    }
    while (*p != '\0') {
        size_t n = strcspn(p, "/");
        char name[256];
        bool excluded = false;

        if (n == 0) {
            p++;
            continue;
        }
        if (n >= sizeof(name) || !alive) {
            report = false; /* not a name, or the walk did not come down here */
            break;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        p += n;
        alive = agent_glob_step(pat, sets[0], name, true, next[0]);
        for (unsigned i = 1; i <= nexcl; i++) {
            (void)agent_glob_step(g[i], sets[i], name, true, next[i]);
            excluded |= agent_glob_matched(g[i], next[i]);
        }
        if (excluded) {
            report = false;
            break;
        }
        report = agent_glob_matched(pat, next[0]);
        for (unsigned i = 0; i <= nexcl; i++) {
            uint8_t *t = sets[i];
            sets[i] = next[i];
            next[i] = t;
        }
    }
    for (unsigned i = 0; i <= nexcl; i++) {
        free(sets[i]);
        free(next[i]);
    }
    return report && strspn(p, "/") == strlen(p);
}

/* Whether some component of the pattern could match a name starting with '.': one starting with
 * '.' or "\.", in itself or in a brace alternative. */
static bool has_dot_comp(const struct agent_glob *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        if (g->c[i].pat == NULL) {
            continue;
        }
        if (g->c[i].alts == NULL) {
            if (g->c[i].pat[0] == '.' || (g->c[i].pat[0] == '\\' && g->c[i].pat[1] == '.')) {
                return true;
            }
            continue;
        }
        for (char **a = g->c[i].alts; *a != NULL; a++) {
            if ((*a)[0] == '.' || ((*a)[0] == '\\' && (*a)[1] == '.')) {
                return true;
            }
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct agent_glob pat, excl[EXCL_MAX];
    unsigned nexcl = 0;
    struct sbx_err err;
    char *in, *p, *line;

    if (size > 8192) {
        return 0;
    }
    in = malloc(size + 1);
    if (in == NULL) {
        return 0;
    }
    memcpy(in, data, size);
    in[size] = '\0';
    p = in;
    line = strsep(&p, "\n");
    if (agent_glob_compile(&pat, line, WALK_GLOB, "pattern", &err) != 0) {
        free(in);
        return 0;
    }
    while ((line = strsep(&p, "\n")) != NULL && line[0] != '\0') {
        if (nexcl < EXCL_MAX &&
            agent_glob_compile(&excl[nexcl], line, WALK_GLOB, "exclude", &err) == 0) {
            nexcl++;
        }
    }
    while ((line = strsep(&p, "\n")) != NULL) {
        bool reported, whole;
        bool hidden = false, dir_excluded = false;
        char prefix[8192];
        size_t len = strlen(line);

        /* Every directory above the path and the path itself: is one excluded? */
        if (strspn(line, "/") == len) {
            continue; /* the root itself, which fs.glob never reports */
        }
        reported = walk(&pat, excl, nexcl, line);
        whole = fuzz_check_steps(&pat, line);
        for (size_t i = 1; i <= len; i++) {
            if ((i == len || line[i] == '/') && line[i - 1] != '/') {
                memcpy(prefix, line, i);
                prefix[i] = '\0';
                for (unsigned k = 0; k < nexcl && !dir_excluded; k++) {
                    dir_excluded = agent_glob_match(&excl[k], prefix);
                }
            }
        }
        for (const char *c = line; *c != '\0'; c++) {
            hidden |= c[0] == '.' && (c == line || c[-1] == '/');
        }
        if (reported && (!whole || dir_excluded)) {
            abort();
        }
        if (whole && !dir_excluded && strlen(line) < 255 && !reported) {
            abort(); /* a path of short names the walk would reach but not report */
        }
        if (whole && hidden && !has_dot_comp(&pat)) {
            abort(); /* a hidden name matched by wildcards only */
        }
    }
    for (unsigned i = 0; i < nexcl; i++) {
        agent_glob_free(&excl[i]);
    }
    agent_glob_free(&pat);
    free(in);
    return 0;
}
