/*
 * libFuzzer target for agent/glob.c, the matcher of fs.glob, fs.walk and pack's ignore rules:
 * the input is a flags byte (AGENT_GLOB_* in its low bits), a pattern up to the first '\n', then
 * paths, one a line. A pattern is compiled or refused for a reason glob.h names; each path's
 * match agrees with the walk a component at a time (fuzz_workload_check.h); and a pattern of one
 * plain component (no braces, no `**`, no "[:class:]") matches a name exactly when fnmatch(3)
 * does.
 */
#include <fnmatch.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_workload_check.h"
#include "glob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether the pattern can hold nothing a refusal is for: 1..64 components, none empty, "." or
 * "..", no brace. */
static bool plain(const char *pat)
{
    int comps = 0;

    if (strchr(pat, '{') != NULL || pat[0] == '\0') {
        return false;
    }
    for (const char *c = pat; *c != '\0';) {
        size_t l = strcspn(c, "/");
        if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.') ||
            ++comps > 64) {
            return false;
        }
        c += l + (c[l] == '/');
        if (c[-1] == '/' && *c == '\0') {
            return false; /* a trailing '/': an empty last component under AGENT_GLOB_GIT */
        }
    }
    return true;
}

/* One component fnmatch reads the way glob.c does: printable ASCII, no '/', not stars only, no
 * bracket expression of a class ("[:", "[=", "[."), no lone backslash at the end. */
static bool fnmatch_comparable(const char *pat)
{
    size_t n = strlen(pat), bs = 0;

    if (n == 0 || strspn(pat, "*") == n || strstr(pat, "[:") || strstr(pat, "[=") ||
        strstr(pat, "[.")) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (pat[i] < 0x20 || pat[i] > 0x7e || pat[i] == '/' || pat[i] == '{') {
            return false;
        }
    }
    /* glibc's fnmatch does not match an unterminated bracket ending in a range's '-' ("[a-")
     * even against itself, where POSIX (and glob.c) take the '[' literally. */
    if (pat[n - 1] == '-' && strchr(pat, '[') != NULL) {
        return false;
    }
    while (bs < n && pat[n - 1 - bs] == '\\') {
        bs++;
    }
    return bs % 2 == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in, *pat, *p, *line;
    struct agent_glob g;
    struct sbx_err err;
    unsigned flags;
    int rc;

    /* Room for a pattern of more than AGENT_GLOB_COMPS_MAX components (8193 bytes and more:
     * pack.create's excludes may be that long). */
    if (size == 0 || size > 16384) {
        return 0;
    }
    flags = data[0] & (AGENT_GLOB_BRACES | AGENT_GLOB_PERIOD | AGENT_GLOB_GIT);
    in = malloc(size);
    if (in == NULL) {
        return 0;
    }
    memcpy(in, data + 1, size - 1);
    in[size - 1] = '\0';
    p = in;
    pat = strsep(&p, "\n");
    rc = agent_glob_compile(&g, pat, flags, "pattern", &err);
    if (rc != 0 && (rc != -2 || plain(pat))) {
        abort(); /* out of memory, or a pattern refused for no reason glob.h gives */
    }
    if (rc != 0) {
        if (g.c != NULL || g.buf != NULL || g.scratch != NULL || g.n != 0) {
            abort(); /* "@g is empty after a failure" */
        }
        free(in);
        return 0;
    }
    while ((line = strsep(&p, "\n")) != NULL) {
        bool m = fuzz_check_steps(&g, line);

        if (strchr(pat, '/') == NULL && strchr(line, '/') == NULL && line[0] != '\0' &&
            fnmatch_comparable(pat) && (flags & AGENT_GLOB_GIT) == 0) {
            bool period = (flags & AGENT_GLOB_PERIOD) != 0;
            bool f = fnmatch(pat, line, period ? FNM_PERIOD : 0) == 0;
            if (f != m) {
                fprintf(stderr, "pattern \"%s\" name \"%s\": glob %d, fnmatch %d\n", pat, line, m,
                        f);
                abort();
            }
        }
    }
    agent_glob_free(&g);
    agent_glob_free(&g); /* twice is fine */
    free(in);
    return 0;
}
