/*
 * Glob patterns with `**` (glob.c), the one matcher of fs.glob and fs.walk's patterns
 * (PROTOCOL.md §17.5) and of pack's ignore rules (§19.3, gitignore). A pattern is compiled into
 * its `/`-separated components; matching runs a small NFA over a path's components, one at a
 * time, whose state is the set of pattern positions reached (position n: matched). A walk keeps
 * one set per open directory and descends only while a position short of the end is alive; a
 * whole path is matched with agent_glob_match. No backtracking: the cost is bounded by
 * components x positions x pattern length x name length, whatever a hostile pattern holds.
 *
 * Per component: `*` any run of characters, `?` one, `[...]` a class (ranges, `!` or `^`
 * negates, `\` escapes), `\x` the character x; a component that is exactly `**` matches zero
 * or more components (elsewhere `**` is `*`). Both callers agree on all that; where they differ,
 * a flag says which rule applies.
 */
#ifndef SBX_AGENT_GLOB_H
#define SBX_AGENT_GLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sbx/err.h"

/* `{a,b}` alternatives within a component (fs.glob); without, braces are literal
 * (gitignore). */
#define AGENT_GLOB_BRACES 1u
/* A leading '.' of a name is matched only by a literal '.', and `**` does not enter a name
 * starting with '.' (fs.glob, fnmatch's FNM_PERIOD); without, wildcards match it too
 * (gitignore). */
#define AGENT_GLOB_PERIOD 2u
/* Gitignore's reading of '/' and '*' (git's wildmatch): a component of two or more stars only
 * is `**`; a trailing `**` matches one or more components, what is inside the directory before
 * it, not that directory; an empty component matches nothing ("a//b" is not "a/b"). Without:
 * only "**" is `**`, a trailing one matches zero or more components (so the directory before
 * it matches too), and empty components are skipped (fs.glob). */
#define AGENT_GLOB_GIT 4u

/* Components that each match one name (all but `**`) a pattern may have: more than a path the
 * agent matches can hold (8192 bytes: fs.walk's entry paths). */
#define AGENT_GLOB_COMPS_MAX 4096u

/* One component. */
struct agent_glob_comp {
    const char *pat; /* the component (in agent_glob.buf), or NULL for `**` */
    char **alts;     /* NULL-terminated brace alternatives replacing @pat, or NULL */
};

/* A compiled pattern: @n components, positions 0..n. */
struct agent_glob {
    struct agent_glob_comp *c;
    unsigned n;
    unsigned flags;
    size_t setsz;     /* bytes of a position set */
    char *buf;        /* the pattern, each '/' replaced by a NUL */
    uint8_t *scratch; /* two sets, for agent_glob_match */
};

/*
 * Compile @pat with @flags (AGENT_GLOB_*) into @g (free with agent_glob_free); the memory it
 * takes is a small multiple of @pat's length. Returns 0; -1 with @err INTERNAL when out of
 * memory; -2 with BAD_PARAM naming @field for a pattern that can match nothing a directory holds:
 * without components ("", "/"), with a "." or ".." component, with more than
 * AGENT_GLOB_COMPS_MAX, with an empty one (AGENT_GLOB_GIT), or with more than 32 braces or 256
 * alternatives in one component (AGENT_GLOB_BRACES). @g is empty after a failure.
 */
int agent_glob_compile(struct agent_glob *g, const char *pat, unsigned flags, const char *field,
                       struct sbx_err *err);

/* Free what agent_glob_compile allocated; @g is empty afterwards (freeing twice is fine). */
void agent_glob_free(struct agent_glob *g);

/* Fill the set @set (g->setsz bytes) with the positions of an empty path: the start. */
void agent_glob_start(const struct agent_glob *g, uint8_t *set);

/*
 * Advance the position set @in over the component @name into @out (both g->setsz bytes).
 * Without @loop a `**` does not consume the component (a symlink that is not to be followed
 * through `**`). Returns whether a position short of the end is alive: whether a path going on
 * below @name can still match.
 */
bool agent_glob_step(const struct agent_glob *g, const uint8_t *in, const char *name, bool loop,
                     uint8_t *out);

/* True when @set holds the end position: the path that led to it matches. */
bool agent_glob_matched(const struct agent_glob *g, const uint8_t *set);

/* True when the relative @path matches @g as a whole. Uses g->scratch: one thread at a time per
 * pattern. */
bool agent_glob_match(struct agent_glob *g, const char *path);

/* --- gitignore rules (pack.create's ignore files and exclude, PROTOCOL.md §19.3) ---------- */

/* Wildcards one rule may hold. */
#define AGENT_IGNORE_STARS_MAX 16

struct agent_ignore_rule {
    struct agent_glob pat; /* AGENT_GLOB_GIT */
    bool negate, dir_only, anchored;
};

/* The rules in order: the last one that matches a path decides. Zeroed: none. */
struct agent_ignore {
    struct agent_ignore_rule *v;
    size_t n, cap;
};

/* Free the rules; @ig is empty afterwards. */
void agent_ignore_free(struct agent_ignore *ig);

/* Add one gitignore line of @len bytes (a trailing "\n" or "\r\n" included or not); blank
 * lines, comments and patterns that can match nothing (a "." or ".." component) are skipped.
 * Returns 0; -1 when out of memory, -2 for a pattern with more than AGENT_IGNORE_STARS_MAX stars
 * (not added). */
int agent_ignore_add(struct agent_ignore *ig, const char *line, size_t len);

/* True if @rel (relative to the pack root), a directory when @is_dir, is excluded. Uses the
 * patterns' scratch: one thread at a time. */
bool agent_ignore_match(struct agent_ignore *ig, const char *rel, bool is_dir);

#endif /* SBX_AGENT_GLOB_H */
