/*
 * sbx errors -> Deno ErrorObjects (docs/GATEWAY.md). An OS error keeps its errno name as
 * `code` and gets the class Deno gives it (std::io::ErrorKind as Deno maps it); a protocol error
 * of the agent (PROTOCOL.md §7.2) gets the nearest class and its own code as `code`.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"

struct cls_map {
    const char *key;
    const char *cls;
};

/* errno name -> Deno class. Everything else is "Error". EINVAL is Rust's InvalidInput, which
 * Deno raises as TypeError. */
static const struct cls_map errno_classes[] = {
    { "ENOENT", "NotFound" },
    { "EACCES", "PermissionDenied" },
    { "EPERM", "PermissionDenied" },
    { "EEXIST", "AlreadyExists" },
    { "EISDIR", "IsADirectory" },
    { "ENOTDIR", "NotADirectory" },
    { "ELOOP", "FilesystemLoop" },
    { "EBUSY", "Busy" },
    { "ETXTBSY", "Busy" },
    { "EPIPE", "BrokenPipe" },
    { "EAGAIN", "WouldBlock" },
    { "EWOULDBLOCK", "WouldBlock" },
    { "EINTR", "Interrupted" },
    { "ETIMEDOUT", "TimedOut" },
    { "ECONNREFUSED", "ConnectionRefused" },
    { "ECONNRESET", "ConnectionReset" },
    { "ECONNABORTED", "ConnectionAborted" },
    { "ENOTCONN", "NotConnected" },
    { "EADDRINUSE", "AddrInUse" },
    { "EADDRNOTAVAIL", "AddrNotAvailable" },
    { "ENETUNREACH", "NetworkUnreachable" },
    { "EOPNOTSUPP", "NotSupported" },
    { "ENOTSUP", "NotSupported" },
    { "ENOSYS", "NotSupported" },
    { "EINVAL", "TypeError" },
};

/* sbx protocol code (PROTOCOL.md §7.2, and the core's local EOF) -> Deno class. */
static const struct cls_map code_classes[] = {
    { SBX_E_BAD_PARAM, "TypeError" },
    { SBX_E_UNSUPPORTED, "NotSupported" },
    { SBX_E_UNKNOWN_METHOD, "NotSupported" },
    { SBX_E_VERSION, "NotSupported" },
    { SBX_E_NOT_FOUND, "NotFound" },
    { SBX_E_LIMIT, "Error" },
    { SBX_E_TIMEOUT, "TimedOut" },
    { SBX_E_CANCELLED, "Interrupted" },
    { SBX_E_BUSY, "Busy" },
    { SBX_E_AUTH, "PermissionDenied" },
    { SBX_E_STREAM, "InvalidData" },
    { SBX_E_BAD_MESSAGE, "InvalidData" },
    { SBX_E_BAD_FRAME, "InvalidData" },
    { SBX_E_FRAME_TOO_LARGE, "InvalidData" },
    { SBX_E_HELLO_REQUIRED, "Error" },
    { SBX_E_INTERNAL, "Error" },
    { SBX_E_EOF, "ConnectionReset" },
};

static const char *lookup(const struct cls_map *m, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].key, key) == 0) {
            return m[i].cls;
        }
    }
    return NULL;
}

/* Set @key on @o to a string (NULL: null). jansson refuses invalid UTF-8: fall back to a lossy
 * copy where bytes >= 0x80 become '?', so an error never goes out without its message. */
static void set_str(json_t *o, const char *key, const char *s)
{
    if (s == NULL) {
        (void)json_object_set_new(o, key, json_null());
        return;
    }
    json_t *v = json_string(s);
    if (v == NULL) {
        size_t n = strlen(s);
        char *copy = malloc(n + 1);
        if (copy != NULL) {
            for (size_t i = 0; i < n; i++) {
                copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
            }
            copy[n] = '\0';
            v = json_string(copy);
            free(copy);
        }
    }
    (void)json_object_set_new(o, key, v != NULL ? v : json_null());
}

json_t *gw_errobj(const char *cls, const char *code, const char *msg)
{
    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    set_str(o, "constructorName", cls != NULL ? cls : "Error");
    set_str(o, "message", msg != NULL ? msg : "");
    set_str(o, "code", code);
    (void)json_object_set_new(o, "stack", json_null());
    (void)json_object_set_new(o, "name", json_null());
    (void)json_object_set_new(o, "cause", json_null());
    return o;
}

/* The errno name of @e, or NULL when it carries no OS error. */
static const char *errno_name_of(const struct sbx_err *e, int *num)
{
    *num = e->sys_errno;
    if (e->code[0] == 'E' && strcmp(e->code, SBX_E_EOF) != 0) {
        if (*num <= 0) {
            *num = sbx_errno_from_name(e->code);
        }
        return e->code;
    }
    if (*num > 0) {
        const char *n = sbx_errno_name(*num);
        return n != NULL ? n : strerrorname_np(*num);
    }
    return NULL;
}

json_t *gw_errobj_sbx(const struct sbx_err *e, const char *op, const char *path)
{
    if (e == NULL || e->code[0] == '\0') {
        return gw_errobj("Error", NULL, "unknown error");
    }
    int num = 0;
    const char *ename = errno_name_of(e, &num);
    char msg[SBX_ERR_MSG_MAX + SBX_ERR_PATH_MAX + 128];
    if (ename != NULL) {
        const char *cls =
            lookup(errno_classes, sizeof(errno_classes) / sizeof(errno_classes[0]), ename);
        const char *desc = num > 0 ? strerrordesc_np(num) : NULL;
        if (desc == NULL) {
            desc = e->msg[0] != '\0' ? e->msg : ename;
        }
        const char *p = path != NULL ? path : (e->path[0] != '\0' ? e->path : NULL);
        int n;
        if (op != NULL && p != NULL) {
            n = snprintf(msg, sizeof(msg), "%s (os error %d): %s '%s'", desc, num, op, p);
        } else if (op != NULL) {
            n = snprintf(msg, sizeof(msg), "%s (os error %d): %s", desc, num, op);
        } else {
            n = snprintf(msg, sizeof(msg), "%s (os error %d)", desc, num);
        }
        if (n < 0) {
            msg[0] = '\0';
        }
        return gw_errobj(cls != NULL ? cls : "Error", ename, msg);
    }
    const char *cls = lookup(code_classes, sizeof(code_classes) / sizeof(code_classes[0]), e->code);
    if (op != NULL && e->msg[0] != '\0') {
        if (snprintf(msg, sizeof(msg), "%s: %s", op, e->msg) < 0) {
            msg[0] = '\0';
        }
    } else if (snprintf(msg, sizeof(msg), "%s", e->msg[0] != '\0' ? e->msg : e->code) < 0) {
        msg[0] = '\0';
    }
    return gw_errobj(cls != NULL ? cls : "Error", e->code, msg);
}
