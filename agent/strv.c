/* String vectors: read from request array params, made for a shell command, freed. */
#include "strv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/msg.h"

void agent_strv_free(char **v)
{
    if (v == NULL) {
        return;
    }
    for (char **p = v; *p != NULL; p++) {
        free(*p);
    }
    free(v);
}

char **agent_strv_from_array(const msgpack_object *arr, const char *field, size_t maxlen,
                             unsigned flags, struct sbx_err *err)
{
    bool nonempty = (flags & AGENT_STRV_NONEMPTY) != 0;
    char **v = calloc(arr->via.array.size + 1, sizeof(*v));

    if (v == NULL) {
        sbx_err_oom(err);
        return NULL;
    }
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const char *p;
        size_t n;
        if (!sbx_obj_bytes(&arr->via.array.ptr[i], &p, &n) || (nonempty && n == 0) || n > maxlen ||
            memchr(p, '\0', n) != NULL) {
            char elem[SBX_ERR_FIELD_MAX];
            /* The element, not the array: field paths index arrays (PROTOCOL.md §7.5). */
            (void)snprintf(elem, sizeof(elem), "%s[%u]", field, i);
            sbx_err_param(err, elem, "%s must be a %sstring of at most %zu bytes without NUL", elem,
                          nonempty ? "non-empty " : "", maxlen);
            agent_strv_free(v);
            return NULL;
        }
        v[i] = strndup(p, n);
        if (v[i] == NULL) {
            sbx_err_oom(err);
            agent_strv_free(v);
            return NULL;
        }
    }
    return v;
}

int agent_strv_param(const msgpack_object *params, const char *key, uint32_t max, size_t maxlen,
                     unsigned flags, char ***out, size_t *n, struct sbx_err *err)
{
    const msgpack_object *arr;
    int r = sbx_param_array(params, key, SBX_OPTIONAL, max, &arr, err);

    *out = NULL;
    if (n != NULL) {
        *n = 0;
    }
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    *out = agent_strv_from_array(arr, key, maxlen, flags, err);
    if (*out == NULL) {
        return -1;
    }
    if (n != NULL) {
        *n = arr->via.array.size;
    }
    return 0;
}

char **agent_strv_sh(const char *cmd, size_t len)
{
    char **v = calloc(4, sizeof(*v));

    if (v == NULL) {
        return NULL;
    }
    if ((v[0] = strdup("/bin/sh")) == NULL || (v[1] = strdup("-c")) == NULL ||
        (v[2] = strndup(cmd, len)) == NULL) {
        agent_strv_free(v);
        return NULL;
    }
    return v;
}
