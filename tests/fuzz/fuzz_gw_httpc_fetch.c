/*
 * The fetch.c half of the gw_httpc target (fuzz_gw_httpc.c): fetch.c is compiled in here for its
 * static URL and host pattern functions. fz_fetch_one takes "URL\nPATTERN\nLOCATION\nNAME".
 * LOCATION is also a response header value handed to the SDK as a ByteString (bytes_latin1),
 * which must read back (latin1_bytes, as fetch reads header values from the SDK) as the same bytes
 * less control characters; a final dot on the URL's host name never changes what PATTERN allows.
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
    json_t *bs = bytes_latin1(loc);
    if (bs == NULL) {
        abort(); /* a header value the SDK cannot be given */
    }
    char *back = latin1_bytes(json_string_value(bs), json_string_length(bs));
    size_t k = 0;
    for (const char *c = loc; back != NULL && *c != '\0'; c++) {
        if (((unsigned char)*c >= 0x20 || *c == '\t') && *c != 0x7f && back[k++] != *c) {
            abort(); /* the ByteString is not the value's bytes */
        }
    }
    if (back == NULL || back[k] != '\0') {
        abort();
    }
    free(back);
    json_decref(bs);
    if (url_parse(surl, &u, why, sizeof(why)) == 0) {
        json_t *list = json_pack("[s, s]", pat, "*.example.com:443");

        if (u.port == 0 || u.host[0] == '\0' || u.target == NULL) {
            abort();
        }
        bool allowed = pattern_match(pat, u.host, u.port);
        size_t hl = strlen(u.host);
        if (!u.v6 && hl > 0 && u.host[hl - 1] != '.') {
            char dotted[sizeof(u.host) + 1];
            memcpy(dotted, u.host, hl);
            memcpy(dotted + hl, ".", 2);
            if (pattern_match(pat, dotted, u.port) != allowed) {
                abort(); /* "host." and "host" are one host name */
            }
        }
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
