/* Structured errors, errno names and signal names. */
#include "sbx/err.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy_str(char *dst, size_t dstsz, const char *src)
{
    size_t n = strnlen(src, dstsz - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void sbx_err_clear(struct sbx_err *e)
{
    /* Field by field: the path buffer is large and only its first byte matters. */
    e->code[0] = '\0';
    e->stage[0] = '\0';
    e->field[0] = '\0';
    e->limit[0] = '\0';
    e->msg[0] = '\0';
    e->sys_errno = 0;
    e->has_min = e->has_max = false;
    e->path[0] = '\0';
}

void sbx_err_set_path(struct sbx_err *e, const char *path)
{
    copy_str(e->path, sizeof(e->path), path);
}

bool sbx_err_isset(const struct sbx_err *e)
{
    return e->code[0] != '\0';
}

__attribute__((format(printf, 3, 0))) static void err_vset(struct sbx_err *e, const char *code,
                                                           const char *fmt, va_list ap)
{
    sbx_err_clear(e);
    copy_str(e->code, sizeof(e->code), code);
    (void)vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
}

int sbx_err_set(struct sbx_err *e, const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_vset(e, code, fmt, ap);
    va_end(ap);
    return -1;
}

int sbx_err_param(struct sbx_err *e, const char *field, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_vset(e, SBX_E_BAD_PARAM, fmt, ap);
    va_end(ap);
    copy_str(e->field, sizeof(e->field), field);
    return -1;
}

int sbx_err_oom(struct sbx_err *e)
{
    return sbx_err_set(e, SBX_E_INTERNAL, "out of memory");
}

int sbx_err_limit(struct sbx_err *e, const char *limit, uint64_t max, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_vset(e, SBX_E_LIMIT, fmt, ap);
    va_end(ap);
    copy_str(e->limit, sizeof(e->limit), limit);
    e->max = max;
    e->has_max = true;
    return -1;
}

int sbx_err_sys(struct sbx_err *e, int errnum, const char *stage, const char *fmt, ...)
{
    const char *name = sbx_errno_name(errnum);
    char what[SBX_ERR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);

    sbx_err_clear(e);
    if (name != NULL) {
        copy_str(e->code, sizeof(e->code), name);
    } else {
        (void)snprintf(e->code, sizeof(e->code), "E%d", errnum);
    }
    e->sys_errno = errnum;
    if (stage != NULL) {
        copy_str(e->stage, sizeof(e->stage), stage);
    }
    (void)snprintf(e->msg, sizeof(e->msg), "%s: %s", what, strerror(errnum));
    return errnum > 0 ? -errnum : -1;
}

void sbx_err_prefix(struct sbx_err *e, const char *fmt, ...)
{
    char head[SBX_ERR_MSG_MAX];
    char old[SBX_ERR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof(old));
    (void)snprintf(e->msg, sizeof(e->msg), "%s: %s", head, old);
}

const char *sbx_errno_name(int errnum)
{
    if (errnum <= 0 || errnum > 4095) {
        return NULL;
    }
    /* glibc >= 2.32 knows every Linux errno name; no table of our own to keep in step. */
    return strerrorname_np(errnum);
}

int sbx_errno_from_name(const char *name)
{
    for (int i = 1; i < 200; i++) {
        const char *n = strerrorname_np(i);
        if (n != NULL && strcmp(n, name) == 0) {
            return i;
        }
    }
    return 0;
}

/* Linux generic signal numbers 1..31 (PROTOCOL.md Appendix A); 32..64 are "SIG<n>". */
static const char *const sig_names[32] = {
    NULL,   "HUP",  "INT",  "QUIT", "ILL",    "TRAP",   "ABRT",  "BUS",  "FPE",  "KILL", "USR1",
    "SEGV", "USR2", "PIPE", "ALRM", "TERM",   "STKFLT", "CHLD",  "CONT", "STOP", "TSTP", "TTIN",
    "TTOU", "URG",  "XCPU", "XFSZ", "VTALRM", "PROF",   "WINCH", "IO",   "PWR",  "SYS",
};

const char *sbx_signal_name(int sig, char *buf, size_t bufsz)
{
    if (sig <= 0 || sig > 64 || bufsz < 16) {
        return NULL;
    }
    if (sig < 32) {
        (void)snprintf(buf, bufsz, "SIG%s", sig_names[sig]);
    } else {
        (void)snprintf(buf, bufsz, "SIG%d", sig);
    }
    return buf;
}

int sbx_signal_parse(const char *s)
{
    static const struct {
        const char *name;
        int sig;
    } aliases[] = { { "IOT", 6 }, { "CLD", 17 }, { "POLL", 29 } };
    char up[32];
    size_t n = strlen(s);
    char *end = NULL;
    long v;

    if (n == 0 || n >= sizeof(up)) {
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        up[i] = (char)toupper((unsigned char)s[i]);
    }
    s = up;
    if (strncmp(s, "SIG", 3) == 0) {
        s += 3;
    }
    if (isdigit((unsigned char)s[0])) {
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || *end != '\0' || v <= 0 || v > 64) {
            return -1;
        }
        return (int)v;
    }
    for (int sig = 1; sig < 32; sig++) {
        if (strcmp(sig_names[sig], s) == 0) {
            return sig;
        }
    }
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
        if (strcmp(aliases[i].name, s) == 0) {
            return aliases[i].sig;
        }
    }
    return -1;
}
