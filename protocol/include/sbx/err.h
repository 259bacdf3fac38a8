/*
 * Structured errors: a stable code string, a human message, and optional errno / stage /
 * field / path. The caller owns the struct; filling it never allocates (crun's libcrun_error_t
 * idea with a fixed buffer), so it is safe on every error path.
 */
#ifndef SBX_ERR_H
#define SBX_ERR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SBX_ERR_CODE_MAX  24
#define SBX_ERR_STAGE_MAX 16
#define SBX_ERR_FIELD_MAX 48
#define SBX_ERR_MSG_MAX   1024
#define SBX_ERR_PATH_MAX  4097 /* a path of up to 4096 bytes (PROTOCOL.md §23) and its NUL */

/* Protocol error codes (PROTOCOL.md "Error object"). OS errors use errno names instead. */
#define SBX_E_BAD_FRAME       "BAD_FRAME"
#define SBX_E_FRAME_TOO_LARGE "FRAME_TOO_LARGE"
#define SBX_E_BAD_MESSAGE     "BAD_MESSAGE"
#define SBX_E_UNKNOWN_METHOD  "UNKNOWN_METHOD"
#define SBX_E_BAD_PARAM       "BAD_PARAM"
#define SBX_E_HELLO_REQUIRED  "HELLO_REQUIRED"
#define SBX_E_VERSION         "VERSION"
#define SBX_E_AUTH            "AUTH"
#define SBX_E_NOT_FOUND       "NOT_FOUND"
#define SBX_E_LIMIT           "LIMIT"
#define SBX_E_STREAM          "STREAM"
#define SBX_E_TIMEOUT         "TIMEOUT"
#define SBX_E_CANCELLED       "CANCELLED"
#define SBX_E_UNSUPPORTED     "UNSUPPORTED"
#define SBX_E_BUSY            "BUSY"
#define SBX_E_INTERNAL        "INTERNAL"

struct sbx_err {
    char code[SBX_ERR_CODE_MAX];   /* "" when no error is set */
    char stage[SBX_ERR_STAGE_MAX]; /* optional: which step failed, e.g. "exec" */
    char field[SBX_ERR_FIELD_MAX]; /* optional: offending parameter name */
    char limit[SBX_ERR_FIELD_MAX]; /* optional, with LIMIT: which cap, e.g. "max_procs" */
    char msg[SBX_ERR_MSG_MAX];     /* human-readable, one line */
    int sys_errno;                 /* optional: Linux errno number, 0 if none */
    bool has_min, has_max;         /* whether min / max below are set */
    uint64_t min, max;             /* optional: VERSION's range (both); LIMIT's cap (max) */
    char path[SBX_ERR_PATH_MAX];   /* optional: file-system errors, the path acted on ("" none) */
};

/* Reset @e to "no error". */
void sbx_err_clear(struct sbx_err *e);

/* True when @e holds an error. */
bool sbx_err_isset(const struct sbx_err *e);

/* Set a protocol error with a printf-style message. Returns -1 for `return sbx_err_set(...)`. */
int sbx_err_set(struct sbx_err *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Set BAD_PARAM naming @field. Returns -1. */
int sbx_err_param(struct sbx_err *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Set INTERNAL "out of memory" (the one message for an allocation that failed). Returns -1. */
int sbx_err_oom(struct sbx_err *e);

/* Set LIMIT naming the cap @limit (PROTOCOL.md §23) and its value @max. Returns -1. */
int sbx_err_limit(struct sbx_err *e, const char *limit, uint64_t max, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Set an OS error: code is the errno name (e.g. "ENOENT"), msg is "<fmt>: <strerror>", stage is
 * optional (NULL for none). Returns -errnum (or -1 when errnum is 0).
 */
int sbx_err_sys(struct sbx_err *e, int errnum, const char *stage, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Set the error's `path` (file-system errors, PROTOCOL.md §7.1); cut at SBX_ERR_PATH_MAX - 1. */
void sbx_err_set_path(struct sbx_err *e, const char *path);

/* Prefix the message with context on the way up: "spawn x: <old message>". */
void sbx_err_prefix(struct sbx_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "ENOENT" for ENOENT; NULL when the number has no name here. */
const char *sbx_errno_name(int errnum);

/* ENOENT for "ENOENT"; 0 when unknown. */
int sbx_errno_from_name(const char *name);

/* "SIGTERM" for 15; real-time signals 32..64 as "SIG<n>" (PROTOCOL.md Appendix A). NULL when
 * out of 1..64. */
const char *sbx_signal_name(int sig, char *buf, size_t bufsz);

/* Parse "TERM", "SIGTERM", "sigterm", "15", "SIG34", aliases IOT/CLD/POLL. Returns 1..64 or -1. */
int sbx_signal_parse(const char *s);

#endif /* SBX_ERR_H */
