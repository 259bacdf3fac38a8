/*
 * libFuzzer target for the REST routes of gateway/rest.c: route matching (the route table and
 * match(), the id segment), the list route's labels[k]=v query filters (parse_filters,
 * query_decode), the sandbox id check and deploy.c's revision id check. rest.c and deploy.c are
 * compiled into this target for their static functions. Input: with the first byte's top bit
 * clear, the byte picks the method and the rest is "PATH?QUERY"; with it set, the rest is the body
 * of a deploy request (POST /api/v2/sandboxes/ID/deploy) through deploy.c's checks (parse_body),
 * the working directory picked by the byte's next bit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/deploy.c"
#include "../../gateway/rest.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fz_methods[] = { "GET", "POST", "DELETE", "PATCH", "PUT", "HEAD" };

/* No component of the relative path @s is "..", and it does not start with '/'. */
static bool fz_rel_ok(const char *s)
{
    if (s[0] == '/') {
        return false;
    }
    for (const char *p = s; *p != '\0';) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            return false;
        }
        p += n + (p[n] == '/');
    }
    return true;
}

/* A deploy body: refused with a reason, or a spec whose paths stay what the checks promise. */
static void fz_deploy_body(bool cwd, const uint8_t *data, size_t size)
{
    static struct gw g;
    json_error_t jerr;
    char why[1024] = "";
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);

    if (body == NULL) {
        return;
    }
    g.opt.cwd = cwd ? "/w" : NULL;
    json_t *spec = parse_body(&g, body, why, sizeof why);
    json_decref(body);
    if (spec == NULL) {
        if (why[0] == '\0') {
            abort(); /* a refused body has a reason */
        }
        return;
    }
    const char *app = json_string_value(json_object_get(spec, "app"));
    const char *entry = json_string_value(json_object_get(spec, "entrypoint"));
    const char *path = json_string_value(json_object_get(spec, "path"));
    const char *root = json_string_value(json_object_get(spec, "root"));
    const char *mode = json_string_value(json_object_get(spec, "mode"));
    const char *bdir = json_string_value(json_object_get(spec, "buildDirectory"));
    json_t *args = json_object_get(spec, "args");
    bool local = mode != NULL && strcmp(mode, "local") == 0;

    if (app == NULL || !app_ok(app) || entry == NULL || !fz_rel_ok(entry) || path == NULL ||
        path[0] != '/' || root == NULL || strlen(root) > STR_MAX ||
        strncmp(root, path, strlen(path)) != 0 || (bdir != NULL && !fz_rel_ok(bdir)) ||
        mode == NULL || (!local && strcmp(mode, "none") != 0) || !json_is_array(args) ||
        json_array_size(args) > ARGS_MAX) {
        abort(); /* a spec the checks let through breaks their promise */
    }
    if (!local && (json_object_get(spec, "installCommand") != NULL ||
                   json_object_get(spec, "buildCommand") != NULL || bdir != NULL)) {
        abort(); /* build steps without mode "local" */
    }
    json_decref(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text, *query;
    char id[64];
    struct filter *f;
    size_t nf = 0;

    if (size < 1) {
        return 0;
    }
    if (data[0] & 0x80) {
        fz_deploy_body((data[0] & 0x40) != 0, data + 1, size - 1);
        return 0;
    }
    if (size > 8192) {
        return 0;
    }
    const char *method = fz_methods[data[0] % (sizeof fz_methods / sizeof *fz_methods)];
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
