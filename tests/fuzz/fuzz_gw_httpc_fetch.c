/*
 * The fetch.c half of the gw_httpc target (fuzz_gw_httpc.c): fetch.c is compiled in here for its
 * static URL and host pattern functions. fz_fetch_one takes "URL\nPATTERN\nLOCATION\nNAME".
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/fetch.c"

void fz_fetch_one(const uint8_t *data, size_t size);

/* The next '\n'-terminated field of *@p (NUL-terminated in place). */
static char *fz_field(char **p)
{
    char *s = *p, *nl = strchr(s, '\n');

    if (nl != NULL) {
        *nl = '\0';
        *p = nl + 1;
    } else {
        *p = s + strlen(s);
    }
    return s;
}

void fz_fetch_one(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *p;
    struct url u;
    char why[512];

    if (text == NULL) {
        return;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    p = text;
    const char *surl = fz_field(&p);
    const char *pat = fz_field(&p);
    const char *loc = fz_field(&p);
    const char *name = fz_field(&p);

    (void)secret_name_ok(name);
    if (url_parse(surl, &u, why, sizeof(why)) == 0) {
        json_t *list = json_pack("[s, s]", pat, "*.example.com:443");

        if (u.port == 0 || u.host[0] == '\0' || u.target == NULL) {
            abort();
        }
        (void)pattern_match(pat, u.host, u.port);
        if (list != NULL) {
            (void)list_match(list, u.host, u.port);
            json_decref(list);
        }
        char *s = url_string(&u);
        char *r = url_resolve(&u, loc);
        if (r != NULL) {
            struct url v;
            if (url_parse(r, &v, why, sizeof(why)) == 0) {
                url_clear(&v);
            }
        }
        free(r);
        free(s);
        url_clear(&u);
    }
    (void)pattern_match(pat, name, 443);
    free(text);
}
