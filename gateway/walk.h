/*
 * The pure parts of walk and expandGlob (walk.c): JavaScript regular expressions compiled with
 * PCRE2, @std/path's globToRegExp and isGlob, and POSIX path normalization as @std/path does it.
 */
#ifndef SBX_GW_WALK_H
#define SBX_GW_WALK_H

#include <stdbool.h>
#include <stddef.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Longest glob or regular expression source accepted (bytes). */
#define GW_WALK_PATTERN_MAX 8192
/* Regular expressions per walk `match` and per `skip`, and globs per expandGlob exclude. */
#define GW_WALK_PATTERNS_MAX 64
/*
 * PCRE2 match-limit steps (about 15 ns each here) that one entry's regular expressions share:
 * each is matched with this divided by how many an entry may run, but never less than
 * GW_RX_STEPS_MIN, so one entry costs at most about 60 ms (64 match, 64 skip twice for a
 * directory, the glob twice). A match that runs out fails the walk, as does one past
 * GW_RX_DEPTH nested backtracking frames.
 */
#define GW_RX_ENTRY_STEPS 2000000u
#define GW_RX_STEPS_MIN   20000u
#define GW_RX_DEPTH       20000u
/* Entry work all walks together do per loop turn before the rest of the gateway runs (at least
 * one entry). */
#define GW_WALK_SLICE_NS (5u * 1000u * 1000u)

/*
 * Compile the JavaScript RegExp @src[0..len) with @flags ("gimsuyvd" letters) with PCRE2, as
 * close to JS as PCRE2 goes: always UTF-8 (PCRE2_UTF), PCRE2_ALT_BSUX (\uHHHH, \xHH),
 * PCRE2_MATCH_UNSET_BACKREF and PCRE2_ALLOW_EMPTY_CLASS ([] and [^]), PCRE2_DOLLAR_ENDONLY unless
 * m; i, m, s mapped; u and v add \u{...}; y anchors; g and d are ignored. Differences that
 * remain: `.` and classes work on code points, not UTF-16 units; lookbehind must have a bounded
 * length; PCRE2-only syntax (possessive quantifiers, \Q..\E, (?i) groups) is accepted.
 * Returns the code (free with pcre2_code_free), or NULL with a message in @why.
 */
pcre2_code *gw_js_regex(const char *src, size_t len, const char *flags, char *why, size_t whylen);

/*
 * The regular expression source @std/path 1.1.4's POSIX globToRegExp(@glob, {extended,
 * globstar}) builds (caseInsensitive is the `i` flag, for gw_js_regex). Returns a new string the
 * caller frees, or NULL when out of memory or @glob is longer than GW_WALK_PATTERN_MAX.
 */
char *gw_glob_to_regex(const char *glob, bool extended, bool globstar);

/* @std/path isGlob(@s): whether @s holds glob syntax. Returns 1, 0, or -1 on a PCRE2 failure. */
int gw_is_glob(const char *s);

/* @std/path posix normalize(@p): "." and ".." resolved (".." kept above a relative start), runs
 * of '/' collapsed, a trailing '/' kept, "" -> ".". A new string, or NULL when out of memory. */
char *gw_path_normalize(const char *p);

#endif /* SBX_GW_WALK_H */
