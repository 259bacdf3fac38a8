/*
 * libFuzzer target for pack's gitignore rules (agent/glob.c, agent_ignore_add and
 * agent_ignore_match; PROTOCOL.md §19.3): the input is an ignore file, read line by line as
 * pack reads one (fgets, 4096-byte lines), then after a NUL byte the paths to judge, one a line,
 * a trailing '/' marking a directory. Each verdict must be the last matching rule's, found the
 * long way (every rule tried, a rule for directories only for a directory); a rule's pattern
 * walked a component at a time agrees with its whole-path match (fuzz_workload_check.h).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_workload_check.h"
#include "glob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t flen = nul != NULL ? (size_t)(nul - data) : size;
    struct agent_ignore ig = { 0 };
    char line[4096], *paths, *p, *rel;
    FILE *f;

    if (size > 16384) {
        return 0;
    }
    f = flen > 0 ? fmemopen((void *)data, flen, "r") : NULL;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (agent_ignore_add(&ig, line, strlen(line)) == -1) {
            abort(); /* out of memory on a small input */
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    for (size_t i = 0; i < ig.n; i++) {
        if (ig.v[i].pat.n == 0) {
            abort(); /* a rule that can match nothing is not kept */
        }
    }
    paths = nul != NULL ? strndup((const char *)nul + 1, size - flen - 1) : strdup("");
    for (p = paths; p != NULL && (rel = strsep(&p, "\n")) != NULL;) {
        size_t n = strlen(rel);
        bool dir = n > 0 && rel[n - 1] == '/', want = false;

        if (dir) {
            rel[--n] = '\0';
        }
        if (n == 0 || rel[0] == '/') {
            continue; /* pack judges paths relative to its root, never the root */
        }
        for (size_t i = 0; i < ig.n; i++) {
            struct agent_ignore_rule *r = &ig.v[i];
            const char *name = strrchr(rel, '/');
            const char *subject = r->anchored ? rel : name != NULL ? name + 1 : rel;
            bool m = fuzz_check_steps(&r->pat, subject);

            if (m && (!r->dir_only || dir)) {
                want = !r->negate;
            }
        }
        if (agent_ignore_match(&ig, rel, dir) != want) {
            abort();
        }
    }
    free(paths);
    agent_ignore_free(&ig);
    agent_ignore_free(&ig);
    return 0;
}
