/*
 * Checks the workload targets share: what agent_path_clean_rel (agent/path.c) promises of a name
 * it cleans, and that walking a glob pattern a component at a time (as fs.glob's walk does)
 * agrees with matching the whole path.
 */
#ifndef SBX_FUZZ_WORKLOAD_CHECK_H
#define SBX_FUZZ_WORKLOAD_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "glob.h"
#include "path.h"

/* @out, what agent_path_clean_rel made of @name (NULL: refused): relative, no ".." component, no
 * trailing '/', "" only for the root itself; and a name it refused has a reason to be. */
static inline void fuzz_check_clean(const char *name, const char *out, size_t bufsz)
{
    size_t n;

    if (out == NULL) {
        bool dotdot = false;

        if (name == NULL || name[0] == '/' || strlen(name) >= bufsz) {
            return;
        }
        for (const char *c = name; *c != '\0';) {
            size_t l = strcspn(c, "/");
            dotdot |= l == 2 && c[0] == '.' && c[1] == '.';
            c += l + (c[l] == '/');
        }
        if (!dotdot) {
            abort(); /* refused a relative name without ".." that fits */
        }
        return;
    }
    n = strlen(out);
    if (name == NULL || n >= bufsz || out[0] == '/' || (n > 0 && out[n - 1] == '/') ||
        strcmp(out, ".") == 0 || (out[0] == '.' && out[1] == '/')) {
        abort();
    }
    for (const char *c = out; *c != '\0';) {
        size_t l = strcspn(c, "/");
        if (l == 2 && c[0] == '.' && c[1] == '.') {
            abort();
        }
        c += l + (c[l] == '/');
    }
    /* What was removed is only "./" prefixes and trailing slashes: @out is inside @name. */
    if (strstr(name, out) == NULL) {
        abort();
    }
}

/* agent_glob_match(@g, @path) == the component-by-component walk with @loop; the walk's
 * pruning (a step with nothing alive and no match) never hides a match further down. Returns the
 * match. */
static inline bool fuzz_check_steps(struct agent_glob *g, const char *path)
{
    uint8_t *a = calloc(2, g->setsz + 1), *b = a + g->setsz + 1, *strict;
    bool whole = agent_glob_match(g, path), dead = false, m;
    const char *p = path;

    if (a == NULL) {
        abort();
    }
    strict = calloc(1, g->setsz + 1);
    agent_glob_start(g, a);
    while (*p != '\0') {
        size_t n = strcspn(p, "/");
        char name[4096];
        bool alive;

        if (n == 0) {
            p++;
            continue;
        }
        if (n >= sizeof(name)) {
            free(a);
            free(strict);
            return whole;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        alive = agent_glob_step(g, a, name, true, b);
        /* Without looping through `**` a component reaches a subset of the positions. */
        (void)agent_glob_step(g, a, name, false, strict);
        for (size_t i = 0; i < g->setsz; i++) {
            if ((strict[i] & ~b[i]) != 0) {
                abort();
            }
        }
        if (!alive && !agent_glob_matched(g, b)) {
            dead = true; /* the walk stops here: nothing below may match */
        }
        memcpy(a, b, g->setsz);
        p += n;
        if (dead) {
            break;
        }
    }
    m = !dead && agent_glob_matched(g, a);
    if (m != whole) {
        abort(); /* the walk and the whole-path match disagree, or pruning hid a match */
    }
    free(a);
    free(strict);
    return whole;
}

#endif
