/*
 * libFuzzer target for the REST routes of gateway/rest.c: route matching (the route table and
 * match(), the id segment), the list route's labels[k]=v query filters (parse_filters,
 * query_decode), the sandbox id check and deploy.c's revision id check. rest.c and deploy.c are
 * compiled into this target for their static functions. Input: the first byte picks the method
 * and whether the request is a WebSocket upgrade, the rest is "PATH?QUERY".
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/deploy.c"
#include "../../gateway/rest.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fz_methods[] = { "GET", "POST", "DELETE", "PATCH", "PUT", "HEAD" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text, *query;
    char id[64];
    struct filter *f;
    size_t nf = 0;

    if (size < 1 || size > 8192) {
        return 0;
    }
    const char *method = fz_methods[(data[0] & 0x7f) % (sizeof fz_methods / sizeof *fz_methods)];
    bool websocket = (data[0] & 0x80) != 0;
    text = malloc(size);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    query = strchr(text, '?');
    if (query != NULL) {
        *query++ = '\0';
    } else {
        query = text + strlen(text); /* "" */
    }

    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const struct route *r = &routes[i];
        id[0] = '\0';
        if (strcmp(r->method, method) != 0 || !match(r->pattern, text, id, sizeof id)) {
            continue;
        }
        if (strchr(r->pattern, '*') != NULL &&
            (id[0] == '\0' || strlen(id) >= sizeof id || strchr(id, '/') != NULL)) {
            abort();
        }
        if (gw_sandbox_id_valid(id) && strlen(id) != 28) {
            abort();
        }
        if (r->fn == route_revision) {
            const char *slash = strrchr(text, '/');
            const char *what = slash != NULL && strcmp(slash + 1, id) != 0 ? slash + 1 : "";
            if (id_valid(id) && strlen(id) != REV_ID_LEN) {
                abort();
            }
            (void)what;
        }
        (void)websocket;
        break;
    }

    f = malloc(FILTERS_MAX * sizeof(*f));
    if (f != NULL && parse_filters(query, f, &nf) == 0) {
        if (nf > FILTERS_MAX) {
            abort();
        }
        for (size_t i = 0; i < nf; i++) {
            if (strnlen(f[i].key, sizeof f[i].key) == sizeof f[i].key ||
                strnlen(f[i].value, sizeof f[i].value) == sizeof f[i].value) {
                abort();
            }
        }
    }
    free(f);

    char out[QUERY_PART_MAX];
    if (query_decode(query, strlen(query), out, sizeof out) == 0 && strlen(out) >= sizeof out) {
        abort();
    }
    (void)gw_sandbox_id_valid(text);
    (void)id_valid(text);
    free(text);
    return 0;
}
