/*
 * Unit tests: agent/glob.c, the `**` matcher of fs.glob and fs.walk patterns (PROTOCOL.md §17.5,
 * flags BRACES | PERIOD) and of pack's ignore rules (§19.3, flag GIT). Table-driven per flag
 * set; then the compile limits, the step API a walk uses, inputs that would make a backtracking
 * matcher explode, and (when git is installed) a cross-check of ignore patterns against
 * `git check-ignore`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "glob.h"

/* fs.glob's flags (fswalk.c's WALK_GLOB) and pack's. */
#define FS  (AGENT_GLOB_BRACES | AGENT_GLOB_PERIOD)
#define GIT AGENT_GLOB_GIT

struct mcase {
    const char *pat;
    const char *path;
    bool want;
};

/* Match every case of @cs under @flags; print each mismatch, then fail if there was one (so one
 * run shows every broken case, not only the first). */
static void run_cases(const struct mcase *cs, size_t n, unsigned flags)
{
    int bad = 0;

    for (size_t i = 0; i < n; i++) {
        struct agent_glob g;
        struct sbx_err err;
        bool got;
        if (agent_glob_compile(&g, cs[i].pat, flags, "pattern", &err) != 0) {
            print_error("flags %u: \"%s\" does not compile: %s\n", flags, cs[i].pat, err.msg);
            bad++;
            continue;
        }
        got = agent_glob_match(&g, cs[i].path);
        if (got != cs[i].want) {
            print_error("flags %u: \"%s\" vs \"%s\": got %d, want %d\n", flags, cs[i].pat,
                        cs[i].path, got, cs[i].want);
            bad++;
        }
        agent_glob_free(&g);
    }
    assert_int_equal(bad, 0);
}

#define RUN(cs, flags) run_cases(cs, sizeof(cs) / sizeof(cs[0]), flags)

/* --- per component: *, ?, [...], \ ------------------------------------------------------- */

static void test_wildcards(void **state)
{
    static const struct mcase cs[] = {
        { "*", "abc", true },
        { "*", "", false }, /* an empty path has no component for `*` */
        { "*", "a/b", false },
        { "a*", "a", true },
        { "a*c", "abbbc", true },
        { "a*c", "abcd", false },
        { "*.c", "x.c", true },
        { "*.c", "x.h", false },
        { "*.c", ".c", true }, /* no PERIOD: a leading dot is an ordinary character */
        { "*a*b*c*", "xxaxxbxxcxx", true },
        { "*a*b*c*", "xxaxxcxxbxx", false },
        { "?", "a", true },
        { "?", "ab", false },
        { "a?c", "abc", true },
        { "a?c", "ac", false },
        { "??", "\xc3\xa9", true }, /* byte-wise: 'é' in UTF-8 is two characters */
        { "?", "\xc3\xa9", false },
        { "A", "a", false }, /* case-sensitive */
        { "[abc]", "b", true },
        { "[abc]", "d", false },
        { "[a-c]x", "bx", true },
        { "[a-c]x", "dx", false },
        { "[!a-c]", "d", true },
        { "[!a-c]", "b", false },
        { "[^a]", "b", true },
        { "[^a]", "a", false },
        { "[]]", "]", true },   /* ']' first in a class is a member */
        { "[!]]", "]", false }, /* and after the negation */
        { "[!]]", "a", true },
        { "[a-]", "-", true }, /* '-' last is a member */
        { "[a-]", "b", false },
        { "[\\]]", "]", true },
        { "[\\-]", "-", true },
        { "[\x80-\xff]", "\xe9", true }, /* bytes compare unsigned */
        { "[a-c][0-9]", "b7", true },
        { "[", "[", true }, /* no closing bracket: a literal '[' */
        { "a[b", "a[b", true },
        { "a[b", "ab", false },
        { "\\*", "*", true },
        { "\\*", "a", false },
        { "\\?", "?", true },
        { "\\?", "a", false },
        { "\\[a]", "[a]", true },
        { "\\[a]", "a", false },
        { "a\\", "a\\", true },     /* a trailing backslash is literal */
        { "{a,b}", "{a,b}", true }, /* no BRACES: literal */
        { "{a,b}", "a", false },
        { "a/b", "a/b", true },
        { "a/b", "a", false },
        { "a/b", "a/b/c", false },
        { "a/*", "a/b", true },
        { "a/*/c", "a/b/c", true },
        { "a/*/c", "a/b/x/c", false },
        { "*/*", "a", false },
        /* Empty pattern components are skipped without GIT, and so are empty path components. */
        { "a//b", "a/b", true },
        { "/a", "a", true },
        { "a/", "a", true },
        { "a/b", "a//b", true },
        { "a/b", "/a/b/", true },
    };

    (void)state;
    RUN(cs, 0);
}

/* --- ** ------------------------------------------------------------------------------------ */

static void test_globstar(void **state)
{
    static const struct mcase cs[] = {
        { "**", "a", true },
        { "**", "a/b/c", true },
        { "**", "", true }, /* zero components */
        /* at the start */
        { "**/c", "c", true }, /* zero components */
        { "**/c", "a/c", true },
        { "**/c", "a/b/c", true },
        { "**/c", "a/b/cd", false },
        { "**/c", "c/d", false },
        /* at the end: without GIT the directory before it matches too */
        { "a/**", "a", true },
        { "a/**", "a/b", true },
        { "a/**", "a/b/c", true },
        { "a/**", "b/c", false },
        { "a/**", "ab", false },
        /* in the middle */
        { "a/**/c", "a/c", true },
        { "a/**/c", "a/b/c", true },
        { "a/**/c", "a/x/y/c", true },
        { "a/**/c", "a/x/y/d", false },
        { "a/**/c", "a/x/c/d", false },
        { "a/**/c", "b/c", false },
        { "a/**/b/**/c", "a/b/c", true },
        { "a/**/b/**/c", "a/x/b/y/b/z/c", true },
        { "a/**/b/**/c", "a/x/c/b", false },
        { "a/**/*.c", "a/x/y/z.c", true },
        { "a/**/*.c", "a/z.h", false },
        { "**/**", "a/b", true },
        { "**/**/c", "c", true },
        { "**/x/**", "x", true },
        { "**/x/**", "a/x/b/c", true },
        { "**/x/**", "a/y/b", false },
        /* `**` that is not a whole component is `*` (within one name) */
        { "a**", "ab", true },
        { "a**", "a/b", false },
        { "**a", "xa", true },
        { "**a", "x/a", false },
        { "a/**b/c", "a/xb/c", true },
        { "a/**b/c", "a/x/b/c", false },
        { "***", "a", true }, /* without GIT only exactly "**" is `**` */
        { "***", "a/b", false },
        { "a/***/c", "a/x/y/c", false },
        { "a/***/c", "a/x/c", true },
        { "\\**", "*x", true }, /* an escaped star: not `**` */
        { "\\**", "x", false },
    };

    (void)state;
    RUN(cs, 0);
}

/* --- braces ------------------------------------------------------------------------------- */

static void test_braces(void **state)
{
    static const struct mcase cs[] = {
        { "{a,b}", "a", true },
        { "{a,b}", "b", true },
        { "{a,b}", "c", false },
        { "{a,b}", "{a,b}", false },
        { "x{a,b}y", "xby", true },
        { "x{a,b}y", "xy", false },
        { "{a,b}{c,d}", "bd", true },
        { "{a,b}{c,d}", "bb", false },
        { "{a,b,c,d,e}", "e", true },
        { "{,x}a", "a", true }, /* an empty alternative */
        { "{,x}a", "xa", true },
        { "{a,{b,c}}d", "ad", true }, /* nested */
        { "{a,{b,c}}d", "cd", true },
        { "{a,{b,c}}d", "{b,c}d", false },
        { "{a,{b,{c,e}}}", "e", true },
        { "{*.c,*.h}", "x.h", true }, /* wildcards inside */
        { "{*.c,*.h}", "x.o", false },
        { "{[ab],c}", "b", true },
        { "{a}", "{a}", true }, /* without a comma: literal */
        { "{a}", "a", false },
        { "{a}{b,c}", "{a}c", true },
        { "{}", "{}", true },
        { "{a,b", "{a,b", true }, /* without its closing brace: literal */
        { "{a,b", "a", false },
        { "a,b}", "a,b}", true },
        { "{a,b}}", "a}", true },
        { "{a\\,b,c}", "a,b", true }, /* an escaped comma does not split */
        { "{a\\,b,c}", "c", true },
        { "{a\\,b,c}", "a", false },
        { "{a\\}b,c}", "a}b", true }, /* nor does an escaped brace close */
        { "\\{a,b}", "{a,b}", true }, /* an escaped brace is literal */
        { "\\{a,b}", "a", false },
        /* Braces never span a '/': "{a" and "b,c}" are literal components. */
        { "{a/b,c}", "{a/b,c}", true },
        { "{a/b,c}", "c", false },
        { "{a/b,c}", "a/b", false },
        { "{a,b}/{c,d}", "b/c", true },
        { "**/{a,b}.c", "x/y/b.c", true },
    };

    (void)state;
    RUN(cs, AGENT_GLOB_BRACES);
}

/*
 * A brace group without a comma is literal, but a group inside it with one is still a brace
 * (bash: `echo {{a,b}}` prints "{a} {b}"; §17.5: "a brace without a comma ... is literal", said
 * of that brace); so is a group after a brace that never closes ({x{a,b} gives {xa}, {xb}).
 */
static void test_braces_inside_literal_group(void **state)
{
    static const struct mcase cs[] = {
        { "{{a,b}}", "{a}", true },      { "{{a,b}}", "{b}", true },
        { "{{a,b}}", "{{a,b}}", false }, { "x{y{a,b}}", "x{ya}", true },
        { "{x{a,b}", "{xa}", false },    { "{x{a,b}", "{xa", true },
        { "{x{a,b}", "{xb", true },      { "{}", "{}", true },
    };

    (void)state;
    RUN(cs, AGENT_GLOB_BRACES);
}

/* --- leading dots (PERIOD) ------------------------------------------------------------------ */

static void test_period(void **state)
{
    static const struct mcase cs[] = {
        { "*", ".a", false },
        { ".*", ".a", true },
        { "?a", ".a", false },
        { "[.]a", ".a", false }, /* only a literal '.' matches it, not a class */
        { "[!x]a", ".a", false },
        { "\\.a", ".a", true },
        { "*", "a.b", true }, /* only a leading dot is special */
        { "a*", "a.b", true },
        { "a?b", "a.b", true },
        { "*/x", ".d/x", false }, /* in every component */
        { ".*/x", ".d/x", true },
        { "d/*", "d/.x", false },
        { "**/x", "d/x", true },
        { "**/x", ".d/x", false }, /* `**` does not enter a hidden directory */
        { "**/x", "d/.e/x", false },
        { "**/.x", ".x", true }, /* but a literal dot after it matches */
        { "**/.x", "d/.x", true },
        { "**/*", ".d/f", false },
        { "a/**", "a", true },
        { "a/**", "a/b/c", true },
        { "a/**", "a/.h", false },
        { "a/**", "a/h/.i", false },
        { ".d/**/x", ".d/e/x", true },
        { "{.a,b}", ".a", true }, /* with braces: each alternative decides */
        { "{*,b}", ".a", false },
        { "{b,.*}", ".a", true },
    };

    (void)state;
    RUN(cs, FS);
}

/* --- gitignore (GIT) ------------------------------------------------------------------------ */

static void test_git(void **state)
{
    static const struct mcase cs[] = {
        /* A trailing `**` matches inside the directory, not the directory itself. */
        { "a/**", "a", false },
        { "a/**", "a/b", true },
        { "a/**", "a/b/c", true },
        { "a/**", "b/a/c", false },
        { "**", "a", true },
        { "**", "a/b", true },
        { "**", "", false }, /* at least one component */
        { "**/a", "a", true },
        { "**/a", "x/y/a", true },
        { "**/a", "x/a/y", false },
        { "a/**/b", "a/b", true },
        { "a/**/b", "a/x/y/b", true },
        { "a/**/b", "a/x/y/c", false },
        { "**/a/**", "x/a/y", true },
        { "**/a/**", "x/a", false },
        /* Any run of two or more stars as a whole component is `**`. */
        { "a/***/b", "a/x/y/b", true },
        { "***/a", "x/y/a", true },
        /* Elsewhere it is `*`: within one component (§19.3; git's own matcher differs). */
        { "a**/b", "ax/b", true },
        { "a**/b", "a/b", true }, /* `*` matches the empty string */
        { "a**/b", "a/x/b", false },
        { "a**/b", "ax/y/b", false },
        { "**b", "x/b", false },
        /* No PERIOD: wildcards and `**` match a leading dot. */
        { "*", ".hidden", true },
        { "**/x", ".d/x", true },
        { "a/**", "a/.h", true },
        { "[.]h", ".h", true },
        /* No BRACES: literal. */
        { "{a,b}", "a", false },
        { "{a,b}", "{a,b}", true },
        { "[a-c]", "b", true },
        { "\\!x", "!x", true },
    };

    (void)state;
    RUN(cs, GIT);
}

/* --- compile errors and limits --------------------------------------------------------------- */

/* Compile @pat under @flags as field @field; expect -2, BAD_PARAM naming @field, a message
 * containing @msg, and @g left empty. */
static void expect_bad(const char *pat, unsigned flags, const char *field, const char *msg)
{
    struct agent_glob g;
    struct sbx_err err;

    memset(&g, 0x5a, sizeof(g));
    sbx_err_clear(&err);
    if (agent_glob_compile(&g, pat, flags, field, &err) != -2) {
        print_error("\"%.60s\" (flags %u) compiled\n", pat, flags);
        fail();
    }
    assert_string_equal(err.code, SBX_E_BAD_PARAM);
    assert_string_equal(err.field, field);
    if (strstr(err.msg, msg) == NULL) {
        print_error("\"%.60s\": message \"%s\" lacks \"%s\"\n", pat, err.msg, msg);
        fail();
    }
    assert_null(g.c);
    assert_null(g.buf);
    assert_null(g.scratch);
    assert_int_equal(g.n, 0);
    agent_glob_free(&g); /* freeing an empty one is fine */
}

static void expect_ok(const char *pat, unsigned flags)
{
    struct agent_glob g;
    struct sbx_err err;

    if (agent_glob_compile(&g, pat, flags, "pattern", &err) != 0) {
        print_error("\"%.60s\" (flags %u): %s\n", pat, flags, err.msg);
        fail();
    }
    agent_glob_free(&g);
    agent_glob_free(&g); /* twice is fine */
    assert_null(g.c);
}

static void test_compile_errors(void **state)
{
    (void)state;
    expect_bad("", 0, "pattern", "no components");
    expect_bad("/", FS, "pattern", "no components");
    expect_bad("///", FS, "pattern", "no components");
    expect_bad(".", FS, "pattern", "\".\" and \"..\"");
    expect_bad("..", FS, "pattern", "\".\" and \"..\"");
    expect_bad("a/./b", FS, "exclude", "\".\" and \"..\"");
    expect_bad("a/../b", GIT, "exclude", "\".\" and \"..\"");
    expect_bad("a//b", GIT, "exclude", "empty component");
    expect_bad("/a", GIT, "exclude", "empty component");
    expect_bad("a/", GIT, "exclude", "empty component");
    expect_ok("...", FS); /* only exactly "." and ".." */
    expect_ok(".a", FS);
    expect_ok("a//b", FS);
}

/* A pattern of @n components "a" joined by '/' (caller frees). */
static char *comps(size_t n, const char *comp)
{
    size_t cl = strlen(comp);
    char *s = malloc(n * (cl + 1) + 1);

    assert_non_null(s);
    for (size_t i = 0; i < n; i++) {
        memcpy(s + i * (cl + 1), comp, cl);
        s[i * (cl + 1) + cl] = '/';
    }
    s[n * (cl + 1) - 1] = '\0';
    return s;
}

static void test_limit_components(void **state)
{
    char *ok = comps(AGENT_GLOB_COMPS_MAX, "a");
    char *over = comps(AGENT_GLOB_COMPS_MAX + 1, "a");
    char *stars = comps(3 * AGENT_GLOB_COMPS_MAX, "**");
    struct agent_glob g;
    struct sbx_err err;

    (void)state;
    expect_ok(ok, FS);
    expect_bad(over, FS, "pattern", "more than 4096 components");
    expect_bad(over, GIT, "exclude", "more than 4096 components");
    /* The maximum matches its own path, and one component less or more does not. */
    assert_int_equal(agent_glob_compile(&g, ok, FS, "pattern", &err), 0);
    assert_int_equal(g.n, AGENT_GLOB_COMPS_MAX);
    assert_true(agent_glob_match(&g, ok));
    assert_false(agent_glob_match(&g, ok + 2));
    assert_false(agent_glob_match(&g, over));
    agent_glob_free(&g);
    /* `**` does not count, and a run of them is one position. */
    assert_int_equal(agent_glob_compile(&g, stars, FS, "pattern", &err), 0);
    assert_int_equal(g.n, 1);
    assert_true(agent_glob_match(&g, ok));
    agent_glob_free(&g);
    free(ok);
    free(over);
    free(stars);
}

static void test_limit_braces(void **state)
{
    char buf[1024];

    (void)state;
    /* 2^8 = 256 alternatives is the cap; 2^9 is over it. */
    buf[0] = '\0';
    for (int i = 0; i < 8; i++) {
        strcat(buf, "{a,b}");
    }
    expect_ok(buf, AGENT_GLOB_BRACES);
    strcat(buf, "{a,b}");
    expect_bad(buf, AGENT_GLOB_BRACES, "pattern", "more than 256 brace alternatives");
    expect_ok(buf, 0); /* without BRACES they are literal: no limit */

    /* One group of 256 alternatives, then 257. */
    strcpy(buf, "{0");
    for (int i = 1; i < 256; i++) {
        strcat(buf, ",x");
    }
    strcat(buf, "}");
    expect_ok(buf, AGENT_GLOB_BRACES);
    strcpy(buf + strlen(buf) - 1, ",y}");
    expect_bad(buf, AGENT_GLOB_BRACES, "exclude", "more than 256 brace alternatives");

    /* More than 32 '{' in one component, even literal ones; 32 is fine. */
    memset(buf, '{', 32);
    buf[32] = '\0';
    expect_ok(buf, AGENT_GLOB_BRACES);
    strcat(buf, "{");
    expect_bad(buf, AGENT_GLOB_BRACES, "pattern", "more than 32 braces");
    /* The count is per component. */
    strcpy(buf, "{{{{{{{{{{{{{{{{/{{{{{{{{{{{{{{{{/{{{{{{{{{{{{{{{{");
    expect_ok(buf, AGENT_GLOB_BRACES);
    /* The alternatives of different components do not multiply. */
    strcpy(buf,
           "{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}/{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}");
    expect_ok(buf, AGENT_GLOB_BRACES);
}

/* --- the step API (fs.walk / fs.glob) --------------------------------------------------------- */

static void test_step(void **state)
{
    struct agent_glob g;
    struct sbx_err err;
    uint8_t *s0, *s1, *s2;

    (void)state;
    assert_int_equal(agent_glob_compile(&g, "a/b", FS, "pattern", &err), 0);
    s0 = calloc(3, g.setsz);
    assert_non_null(s0);
    s1 = s0 + g.setsz;
    s2 = s1 + g.setsz;
    agent_glob_start(&g, s0);
    assert_false(agent_glob_matched(&g, s0));
    assert_true(agent_glob_step(&g, s0, "a", true, s1)); /* "a/..." can still match */
    assert_false(agent_glob_matched(&g, s1));
    assert_false(agent_glob_step(&g, s1, "b", true, s2)); /* nothing below "a/b" can */
    assert_true(agent_glob_matched(&g, s2));
    assert_false(agent_glob_step(&g, s0, "x", true, s1)); /* a dead end */
    assert_false(agent_glob_matched(&g, s1));
    /* The input set is untouched: a walk steps the same parent set for every sibling. */
    assert_false(agent_glob_step(&g, s0, "y", true, s1));
    assert_true(agent_glob_step(&g, s0, "a", true, s1));
    free(s0);
    agent_glob_free(&g);

    /* Without @loop, `**` does not consume the name (a symlink not followed through `**`). */
    assert_int_equal(agent_glob_compile(&g, "**/x", FS, "pattern", &err), 0);
    s0 = calloc(2, g.setsz);
    assert_non_null(s0);
    s1 = s0 + g.setsz;
    agent_glob_start(&g, s0);
    assert_true(agent_glob_step(&g, s0, "lnk", true, s1));
    assert_false(agent_glob_step(&g, s0, "lnk", false, s1));
    assert_false(agent_glob_matched(&g, s1));
    /* ...but a named component still matches it. */
    assert_false(agent_glob_step(&g, s0, "x", false, s1));
    assert_true(agent_glob_matched(&g, s1));
    /* A hidden name with PERIOD is a dead end for `**`. */
    assert_false(agent_glob_step(&g, s0, ".git", true, s1));
    free(s0);
    agent_glob_free(&g);

    /* Without GIT a trailing `**` matches its directory and stays alive; with GIT only below. */
    assert_int_equal(agent_glob_compile(&g, "a/**", FS, "pattern", &err), 0);
    s0 = calloc(2, g.setsz);
    assert_non_null(s0);
    s1 = s0 + g.setsz;
    agent_glob_start(&g, s0);
    assert_true(agent_glob_step(&g, s0, "a", true, s1));
    assert_true(agent_glob_matched(&g, s1));
    free(s0);
    agent_glob_free(&g);
    assert_int_equal(agent_glob_compile(&g, "a/**", GIT, "exclude", &err), 0);
    s0 = calloc(3, g.setsz);
    assert_non_null(s0);
    s1 = s0 + g.setsz;
    s2 = s1 + g.setsz;
    agent_glob_start(&g, s0);
    assert_true(agent_glob_step(&g, s0, "a", true, s1));
    assert_false(agent_glob_matched(&g, s1));
    assert_true(agent_glob_step(&g, s1, "b", true, s2));
    assert_true(agent_glob_matched(&g, s2));
    free(s0);
    agent_glob_free(&g);
}

/* A pattern longer than 8 positions uses more than one byte per set (and the skip of empty
 * bytes in step/closure). */
static void test_step_wide_sets(void **state)
{
    static const struct mcase cs[] = {
        { "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", true },
        { "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", false },
        { "a/b/c/d/e/f/g/h/**/q", "a/b/c/d/e/f/g/h/q", true },
        { "a/b/c/d/e/f/g/h/**/q", "a/b/c/d/e/f/g/h/1/2/3/4/5/6/7/8/9/q", true },
        { "**/a/b/c/d/e/f/g/h/i", "x/y/a/b/c/d/e/f/g/h/i", true },
        { "**/a/b/c/d/e/f/g/h/i", "a/b/c/d/e/f/g/h/a/b/c/d/e/f/g/h/i", true },
        { "**/a/b/c/d/e/f/g/h/i", "a/b/c/d/e/f/g/h/a/b/c/d/e/f/g/h/j", false },
        { "a/*/*/*/*/*/*/*/*/*/**", "a/1/2/3/4/5/6/7/8/9", true },
        { "a/*/*/*/*/*/*/*/*/*/**", "a/1/2/3/4/5/6/7/8", false },
    };

    (void)state;
    RUN(cs, FS);
    RUN(cs, 0);
}

/* --- inputs that make a backtracking matcher explode: they must simply finish ----------------- */

static char *repeat(const char *s, size_t times, const char *tail)
{
    size_t sl = strlen(s), tl = strlen(tail);
    char *r = malloc(sl * times + tl + 1);

    assert_non_null(r);
    for (size_t i = 0; i < times; i++) {
        memcpy(r + i * sl, s, sl);
    }
    memcpy(r + sl * times, tail, tl + 1);
    return r;
}

static void expect_match(const char *pat, unsigned flags, const char *path, bool want)
{
    struct agent_glob g;
    struct sbx_err err;

    assert_int_equal(agent_glob_compile(&g, pat, flags, "pattern", &err), 0);
    assert_int_equal(agent_glob_match(&g, path), want);
    agent_glob_free(&g);
}

static void test_pathological(void **state)
{
    char *pat, *path;

    (void)state;
    /* Stars in one component: fnmatch's recursion is exponential in them. */
    pat = repeat("*a", 40, "*b");
    path = repeat("a", 4000, "");
    expect_match(pat, FS, path, false);
    expect_match(pat, GIT, path, false);
    free(path);
    path = repeat("a", 4000, "b");
    expect_match(pat, FS, path, true);
    free(path);
    free(pat);

    /* Stars and `?`. */
    pat = repeat("*?", 100, "x");
    path = repeat("?", 4000, "");
    expect_match(pat, 0, path, false);
    free(pat);
    free(path);

    /* `**` between many components, against a deep path that almost matches. */
    pat = repeat("**/a/", 300, "b");
    path = repeat("a/", 2000, "c");
    expect_match(pat, FS, path, false);
    expect_match(pat, GIT, path, false);
    free(path);
    path = repeat("a/", 2000, "b");
    expect_match(pat, FS, path, true);
    free(path);
    free(pat);

    /* `**` with a star component after each, and names that all match it. */
    pat = repeat("**/*a*/", 300, "x");
    path = repeat("aaaaaaaa/", 1000, "y");
    expect_match(pat, GIT, path, false);
    free(pat);
    free(path);

    /* 256 brace alternatives of many stars each, against a long name. */
    pat = repeat("{*a,*b}", 8, "*c");
    path = repeat("ab", 2000, "");
    expect_match(pat, FS, path, false);
    free(pat);
    free(path);

    /* A long run of classes. */
    pat = repeat("*[!b]", 200, "b");
    path = repeat("a", 4000, "");
    expect_match(pat, 0, path, false);
    free(pat);
    free(path);
}

/* --- gitignore cross-check (optional: needs git) ---------------------------------------------- */

/* The files of the cross-check tree (directories implied). */
static const char *const git_files[] = {
    "foo", "a/foo", "a/b/c", "a/x/c", "a/x/y/c",   "a/bb/c",        "b",       "x/b",    "x/y/b",
    "bx",  "ab.o",  "a/c.o", "cx",    "doc/r.txt", "doc/sub/r.txt", ".hidden", "a/.h/c", "ax/y/c",
};
/* The paths checked: the files and every directory on the way. */
static const char *const git_paths[] = {
    "foo",       "a",       "a/foo",         "a/b",     "a/b/c", "a/x",    "a/x/c",  "a/x/y",
    "a/x/y/c",   "a/bb",    "a/bb/c",        "b",       "x",     "x/b",    "x/y",    "x/y/b",
    "bx",        "ab.o",    "a/c.o",         "cx",      "ax",    "ax/y",   "ax/y/c", "doc",
    "doc/r.txt", "doc/sub", "doc/sub/r.txt", ".hidden", "a/.h",  "a/.h/c",
};
/* Ignore lines where sbx and git must agree: none with a `**` inside a component (§19.3 departs
 * from git there, see test_git). */
static const char *const git_patterns[] = {
    "*.o", "foo", "/foo",   "a/b",   "a/*",    "a/**",    "**/b", "a/**/c",    "**/x/**",
    "b*",  "?x",  "[a-c]*", "[!a]*", "a/b*/c", "a/***/c", "*/b",  "doc/*.txt", "/doc/**/*.txt",
    "**",  ".*",  "x/**/b", "**/y",  "*",      "a/?",     "c",    "a/.h",
};

/* What pack's ignore_match does with one rule (pack.c, kept in step with it): a leading '/' is
 * dropped and anchors; a pattern with a '/' is matched against the whole relative path, one
 * without against the last component. */
static bool one_rule(struct agent_glob *g, bool anchored, const char *rel)
{
    const char *name = strrchr(rel, '/');

    return agent_glob_match(g, anchored ? rel : (name != NULL ? name + 1 : rel));
}

/* Gitignore's verdict: a path is ignored when it or a directory above it matches (git does not
 * descend into an ignored directory; pack neither). */
static bool sbx_ignored(struct agent_glob *g, bool anchored, const char *rel)
{
    char buf[256];

    snprintf(buf, sizeof(buf), "%s", rel);
    for (char *p = buf;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (one_rule(g, anchored, buf)) {
                return true;
            }
            if (c == '\0') {
                return false;
            }
            *p = c;
        }
    }
}

static int sh(const char *cmd)
{
    int st = system(cmd);

    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_git_check_ignore(void **state)
{
    char dir[] = "/tmp/sbx-test-glob-XXXXXX";
    char cmd[1024];
    size_t npaths = sizeof(git_paths) / sizeof(git_paths[0]);
    int bad = 0;

    (void)state;
    if (sh("git --version >/dev/null 2>&1") != 0) {
        skip(); /* optional: git is not installed */
    }
    assert_non_null(mkdtemp(dir));
    /* HOME and no system config: only the .gitignore written here counts. */
    snprintf(cmd, sizeof(cmd),
             "cd %s && export HOME=%s GIT_CONFIG_NOSYSTEM=1 && git init -q . && "
             "git config core.excludesFile /dev/null",
             dir, dir);
    assert_int_equal(sh(cmd), 0);
    for (size_t i = 0; i < sizeof(git_files) / sizeof(git_files[0]); i++) {
        snprintf(cmd, sizeof(cmd), "cd %s && mkdir -p \"$(dirname '%s')\" && : > '%s'", dir,
                 git_files[i], git_files[i]);
        assert_int_equal(sh(cmd), 0);
    }
    for (size_t i = 0; i < sizeof(git_patterns) / sizeof(git_patterns[0]); i++) {
        const char *pat = git_patterns[i];
        bool anchored = pat[0] == '/' || strchr(pat, '/') != NULL;
        struct agent_glob g;
        struct sbx_err err;
        FILE *f;
        char line[512];

        snprintf(line, sizeof(line), "%s/.gitignore", dir);
        f = fopen(line, "w");
        assert_non_null(f);
        fprintf(f, "%s\n", pat);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(agent_glob_compile(&g, pat + (pat[0] == '/'), GIT, "exclude", &err), 0);

        /* -n -v: one line per path, "::\tpath" when no rule matched. */
        snprintf(cmd, sizeof(cmd),
                 "cd %s && HOME=%s GIT_CONFIG_NOSYSTEM=1 git check-ignore --no-index -n -v --stdin",
                 dir, dir);
        {
            char in[2048] = "";
            char full[4096];
            for (size_t k = 0; k < npaths; k++) {
                strcat(in, git_paths[k]);
                strcat(in, "\n");
            }
            snprintf(full, sizeof(full), "printf '%%s' '%s' | (%s)", in, cmd);
            f = popen(full, "r");
        }
        assert_non_null(f);
        for (size_t k = 0; k < npaths; k++) {
            char *tab;
            bool git_ign, ours;
            assert_non_null(fgets(line, sizeof(line), f));
            line[strcspn(line, "\n")] = '\0';
            tab = strchr(line, '\t');
            assert_non_null(tab);
            assert_string_equal(tab + 1, git_paths[k]);
            git_ign = strncmp(line, "::", 2) != 0;
            ours = sbx_ignored(&g, anchored, git_paths[k]);
            if (git_ign != ours) {
                print_error("\"%s\" vs \"%s\": git %s, sbx %s\n", pat, git_paths[k],
                            git_ign ? "ignores" : "keeps", ours ? "ignores" : "keeps");
                bad++;
            }
        }
        (void)pclose(f); /* check-ignore exits 1 when nothing matched */
        agent_glob_free(&g);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(sh(cmd), 0);
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wildcards),        cmocka_unit_test(test_globstar),
        cmocka_unit_test(test_braces),           cmocka_unit_test(test_braces_inside_literal_group),
        cmocka_unit_test(test_period),           cmocka_unit_test(test_git),
        cmocka_unit_test(test_compile_errors),   cmocka_unit_test(test_limit_components),
        cmocka_unit_test(test_limit_braces),     cmocka_unit_test(test_step),
        cmocka_unit_test(test_step_wide_sets),   cmocka_unit_test(test_pathological),
        cmocka_unit_test(test_git_check_ignore),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
